"""`kiln lookup` and `kiln fetch`: find the artifact for a spec (local, then remote), materialise it."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .. import api
from ._context import remote, store
from ._options import (
    SpecRequest,
    key_option,
    layout_options,
    link_option,
    refuse_spec_with_key,
    remote_option,
    trust_policy_option,
    resolve_query,
    resolve_request,
    spec_options,
)
from ._output import json_option
from ._progress import TransferBar
from ._report import report_lookup

__all__ = ["lookup", "fetch"]


@click.command()
@spec_options
@click.option("--select", is_flag=True, help="Choose the best stored engine for --instance-type; shape fields you give constrain it, the rest are free.")
@remote_option
@trust_policy_option
@json_option
@click.pass_context
def lookup(ctx: click.Context, spec: SpecRequest, select: bool, as_json: bool) -> None:
    """Find the artifact for a spec. Exit 0 on a hit, 1 on a miss (with the nearest entries), 2+ on errors.

    An LMI configuration (--from-env, --serving-properties) that names no consumer leaves it open here: every
    consumer that would load it is looked for, and the hit says whose it is.
    """
    candidates, refused = resolve_query(store(ctx), spec)
    with TransferBar("pull"):
        if len(candidates) == 1 and not refused:
            find = api.select if select else api.lookup
            result = find(candidates[0][1], store=store(ctx), remote=remote(ctx))
        else:  # an LMI configuration that names no consumer: each that would load it
            result = api.lookup_any(candidates, refused, store=store(ctx), remote=remote(ctx), select_one=select)
    report_lookup(result, as_json)
    ctx.exit(0 if result.hit else 1)


@click.command()
@spec_options
@key_option
@click.option("--dest", required=True, type=click.Path(path_type=Path), help="Directory to materialise the artifact into.")
@click.option("--force", is_flag=True, help="Replace DEST if it holds something else.")
@click.option("--copy", is_flag=True, hidden=True, help="Kept for compatibility: files are copied (or cloned) by default.")
@link_option
@layout_options
@remote_option
@trust_policy_option
@json_option
@click.pass_context
def fetch(ctx: click.Context, spec: SpecRequest, key: str | None, dest: Path, force: bool, copy: bool, link: bool,
          layout: str, container_dir: str | None, as_json: bool) -> None:
    """Look a spec up and materialise the hit into --dest (copy-on-write clones or copies). Exit 1 on a miss.

    With --key KEY instead of MODEL and spec flags: exactly that build, no model needed.
    """
    if key is not None:
        from .remote import deliver_by_key  # imports build (and ensure's --on-miss build): `kiln fetch --key` only

        refuse_spec_with_key(spec, key)
        deliver_by_key(ctx, key, dest, force=force, link=link, layout=layout, container_dir=container_dir,
                       as_json=as_json)
        return
    res = resolve_request(store(ctx), spec)
    t0 = time.monotonic()
    with TransferBar("pull"):
        result, path = api.fetch(res, dest, store=store(ctx), remote=remote(ctx), replace=force, link=link,
                                 layout=layout, container_dir=container_dir)
    extra = {"dest": str(path), "layout": layout, "seconds": round(time.monotonic() - t0, 3)} if path else {}
    report_lookup(result, as_json, extra)
    ctx.exit(0 if result.hit and path else 1)
