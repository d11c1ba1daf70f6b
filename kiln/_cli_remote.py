"""`kiln push`, `kiln pull`, `kiln ensure`: the commands that move artifacts to and from a remote."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import click

from .cli import (
    _human_size,
    _layout_options,
    _print_json,
    _remote,
    _report_lookup,
    _resolution,
    _StageReporter,
    _store,
    _TransferBar,
    cli,
    spec_options,
)


def _entries_for(ctx: click.Context, kw: dict[str, Any], keys: Sequence[str], all_: bool, *, remote_side: bool) -> list[Any]:
    """The artifacts a push/pull names: --all, --key KEY..., or a spec."""
    from .api import find_artifact, lookup

    store = _store(ctx)
    if all_:
        if remote_side:
            from .cache._sync import remote_entries

            return list(remote_entries(_remote(ctx, required=True)))
        return list(store.iter_entries())
    if keys:
        if remote_side:
            from .cache._sync import remote_entries

            wanted = [k.lower() for k in keys]
            found = [e for e in remote_entries(_remote(ctx, required=True)) if any(e.key.startswith(w) for w in wanted)]
            if not found:
                raise click.UsageError(f"no artifact with key {', '.join(keys)} on the remote")
            return found
        return [find_artifact(store, k) for k in keys]
    if kw.get("model") is None and not kw.get("from_env") and not kw.get("serving_properties"):
        raise click.UsageError("name what to transfer: MODEL with spec flags, --key KEY, or --all.")
    res = _resolution(ctx, kw)
    result = lookup(res, store=store, remote=None)
    if not result.hit:
        raise click.UsageError("no local artifact for that spec: " + " ".join(result.explanation))
    return [result.entry]


@cli.command(name="push")
@spec_options
@click.option("--key", "keys", multiple=True, metavar="KEY", help="Push this artifact (key or prefix); repeatable.")
@click.option("--all", "all_", is_flag=True, help="Push every artifact in the local store.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def push_cmd(ctx: click.Context, keys: Sequence[str], all_: bool, as_json: bool, **kw: Any) -> None:
    """Upload artifacts to the remote: only the blobs it lacks, the index entry last."""
    from .cache._sync import push

    remote = _remote(ctx, required=True)
    results = []
    for entry in _entries_for(ctx, kw, keys, all_, remote_side=False):
        with _TransferBar(f"push {entry.key[:12]}", enabled=not as_json) as bar:
            results.append(push(_store(ctx), remote, entry, progress=bar))
    if as_json:
        _print_json([r.to_json() for r in results])
        return
    for r in results:
        click.echo(f"pushed {r.entry.key[:12]} to {remote.describe()}: {r.uploaded} blobs ({_human_size(r.uploaded_bytes)}) "
                   f"uploaded, {r.skipped} ({_human_size(r.skipped_bytes)}) already there")


@cli.command(name="pull")
@spec_options
@click.option("--key", "keys", multiple=True, metavar="KEY", help="Pull this artifact (key or prefix); repeatable.")
@click.option("--all", "all_", is_flag=True, help="Pull every artifact on the remote.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def pull_cmd(ctx: click.Context, keys: Sequence[str], all_: bool, as_json: bool, **kw: Any) -> None:
    """Download artifacts from the remote into the local store, verifying every blob."""
    from . import api
    from .cache._sync import pull

    remote = _remote(ctx, required=True)
    if keys or all_:
        results = []
        for entry in _entries_for(ctx, kw, keys, all_, remote_side=True):
            with _TransferBar(f"pull {entry.key[:12]}", enabled=not as_json) as bar:
                results.append(pull(_store(ctx), remote, entry, progress=bar))
        if as_json:
            _print_json([r.to_json() for r in results])
        else:
            for r in results:
                click.echo(f"pulled {r.entry.key[:12]}: {r.downloaded} blobs ({_human_size(r.downloaded_bytes)}) downloaded "
                           f"and verified, {r.reused} already local")
        return
    res = _resolution(ctx, kw)
    with _TransferBar("pull", enabled=not as_json):
        result = api.lookup(res, store=_store(ctx), remote=remote)
    _report_lookup(result, as_json)
    ctx.exit(0 if result.hit else 1)


@cli.command()
@spec_options
@click.option("--dest", required=True, type=click.Path(path_type=Path), help="Directory the server loads the engine from.")
@click.option("--on-miss", type=click.Choice(["fail", "build"]), default="fail", show_default=True,
              help="On a miss: exit 1 with the explanation, or build it here.")
@click.option("--push", "do_push", is_flag=True, help="With --on-miss build: publish the new artifact to the remote.")
@click.option("--force", is_flag=True, help="Replace DEST if it is not empty.")
@_layout_options
@click.option("--print-env", is_flag=True, help="Print `export NAME=VALUE` lines for the consumer on stdout.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def ensure(ctx: click.Context, dest: Path, on_miss: str, do_push: bool, force: bool, layout: str,
           container_dir: str | None, print_env: bool, as_json: bool, **kw: Any) -> None:
    """What a serving container runs at start-up: lookup (local, then remote), fetch, materialise into DEST.

    Exit 0 when DEST holds the engine; 1 on a miss (with the nearest entries), unless
    --on-miss build builds it (and --push publishes it).
    """
    from . import api

    remote = _remote(ctx, required=do_push)
    t0 = time.monotonic()
    res = _resolution(ctx, kw)
    with _TransferBar("pull", enabled=not as_json):
        result, path = api.fetch(res, dest, store=_store(ctx), remote=remote, replace=force, layout=layout,
                                 container_dir=container_dir)
    built = None
    if path is None and on_miss == "build":
        from .cache._sync import push
        from .compile import build as run_build

        for d in result.damaged:
            click.echo(f"kiln: WARNING: {d}", err=True)
        reporter = _StageReporter(quiet=as_json)
        try:
            built = run_build(res, store=_store(ctx), on_stage=reporter)
        finally:
            reporter.stop()
        if do_push:
            push(_store(ctx), remote, built.entry)
        result, path = api.fetch(res, dest, store=_store(ctx), replace=force, layout=layout, container_dir=container_dir)
    extra: dict[str, Any] = {"dest": str(path), "layout": layout, "seconds": round(time.monotonic() - t0, 3)} if path else {}
    if built is not None:
        extra["built"] = built.to_json()
    if print_env and not as_json:
        import shlex

        for d in result.damaged:
            click.echo(f"kiln: WARNING: {d}", err=True)
        if not path:
            for line in result.explanation:
                click.echo(line, err=True)
        for name, value in sorted((result.env or {}).items()):
            click.echo(f"export {name}={shlex.quote(value)}")
        ctx.exit(0 if path else 1)
    _report_lookup(result, as_json, extra)
    ctx.exit(0 if path else 1)
