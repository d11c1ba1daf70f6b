"""`kiln push`, `kiln pull`, `kiln ensure`: the commands that move artifacts to and from a remote.

``ensure`` (and ``fetch``) with ``--key KEY`` deliver one exact build with no model at all
(:func:`deliver_by_key`): a pinned deployment needs only the store or the remote.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

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
    sign_key_option,
    trust_policy_option,
    resolve_request,
    spec_options,
)
from ._output import human_size, json_option, print_json
from ._progress import TransferBar
from ._report import (
    build_json,
    describe_build,
    describe_push,
    report_lookup,
    warn_damaged,
)
from .build import build_and_push, sign_if_built_here

__all__ = ["push_cmd", "pull_cmd", "ensure", "deliver_by_key"]


def _entries_for(ctx: click.Context, spec: SpecRequest, keys: Sequence[str], all_: bool, *,
                 remote_side: bool) -> list[api.IndexEntry]:
    """The artifacts a push/pull names: --all, --key KEY..., or a spec."""
    st = store(ctx)
    if all_:
        if remote_side:
            return list(api.remote_entries(remote(ctx, required=True)))  # type: ignore[arg-type]
        return list(st.iter_entries())
    if keys:
        if remote_side:
            wanted = [k.lower() for k in keys]
            found = [e for e in api.remote_entries(remote(ctx, required=True))  # type: ignore[arg-type]
                     if any(e.key.startswith(w) for w in wanted)]
            if not found:
                raise click.UsageError(f"no artifact with key {', '.join(keys)} on the remote")
            return found
        return [api.find_artifact(st, k) for k in keys]
    if not spec.names_a_spec:
        raise click.UsageError("name what to transfer: MODEL with spec flags, --key KEY, or --all.")
    res = resolve_request(st, spec)
    result = api.lookup(res, store=st, remote=None)
    if not result.hit:
        raise click.UsageError("no local artifact for that spec: " + " ".join(result.explanation))
    assert result.entry is not None
    return [result.entry]


@click.command(name="push")
@spec_options
@click.option("--key", "keys", multiple=True, metavar="KEY", help="Push this artifact (key or prefix); repeatable.")
@click.option("--all", "all_", is_flag=True, help="Push every artifact in the local store.")
@click.option("--force", is_flag=True, help="Replace the remote's artifact of the same key even if it is signed and this one is not.")
@sign_key_option
@remote_option
@json_option
@click.pass_context
def push_cmd(ctx: click.Context, spec: SpecRequest, keys: Sequence[str], all_: bool, force: bool,
             sign_key: api.SigningKey | None, as_json: bool) -> None:
    """Upload artifacts to the remote: only the blobs it lacks, then their signatures, the index entry last.

    With --sign-key (or KILN_SIGN_KEY) each artifact built here is signed first, so its
    signature lands before its entry; one pulled from a remote is pushed with the signatures it
    has, not signed (`kiln sign --force` vouches for it)."""
    rem = remote(ctx, required=True)
    assert rem is not None
    results = []
    for entry in _entries_for(ctx, spec, keys, all_, remote_side=False):
        if sign_key is not None:
            sign_if_built_here(ctx, entry, sign_key)
        with TransferBar(f"push {entry.key[:12]}") as bar:
            results.append(api.push(store(ctx), rem, entry, progress=bar, replace_signed=force))
    if as_json:
        print_json([r.to_json() for r in results])
        return
    for r in results:
        click.echo(describe_push(r, rem.describe()))


@click.command(name="pull")
@spec_options
@click.option("--key", "keys", multiple=True, metavar="KEY", help="Pull this artifact (key or prefix); repeatable.")
@click.option("--all", "all_", is_flag=True, help="Pull every artifact on the remote.")
@remote_option
@trust_policy_option
@json_option
@click.pass_context
def pull_cmd(ctx: click.Context, spec: SpecRequest, keys: Sequence[str], all_: bool, as_json: bool) -> None:
    """Download artifacts from the remote into the local store, verifying every blob."""
    rem = remote(ctx, required=True)
    assert rem is not None
    if keys or all_:
        store(ctx).require_writable("pulling")  # once, before any download (not once per artifact)
        results = []
        failed = 0
        for entry in _entries_for(ctx, spec, keys, all_, remote_side=True):
            try:
                with TransferBar(f"pull {entry.key[:12]}") as bar:
                    results.append(api.pull(store(ctx), rem, entry, progress=bar))
            except api.KilnError as e:  # one refused artifact must not stop the others
                failed += 1
                click.echo(f"kiln: WARNING: artifact {entry.key[:12]} not pulled: {e}", err=True)
        if as_json:
            print_json([r.to_json() for r in results])
        else:
            for r in results:
                click.echo(f"pulled {r.entry.key[:12]}: {r.downloaded} blobs ({human_size(r.downloaded_bytes)}) downloaded "
                           f"and verified, {r.reused} already local")
        if failed:  # the others are pulled; the refusals were errors (exit 2), not misses
            ctx.exit(2)
        return
    res = resolve_request(store(ctx), spec)
    with TransferBar("pull"):
        result = api.lookup(res, store=store(ctx), remote=rem)
    report_lookup(result, as_json)
    ctx.exit(0 if result.hit else 1)


@click.command()
@spec_options
@key_option
@click.option("--dest", required=True, type=click.Path(path_type=Path), help="Directory the server loads the engine from.")
@click.option("--on-miss", type=click.Choice(["fail", "build"]), default="fail", show_default=True,
              help="On a miss: exit 1 with the explanation, or build it here.")
@click.option("--push", "do_push", is_flag=True, help="With --on-miss build: publish the new artifact to the remote.")
@click.option("--force", is_flag=True, help="Replace DEST if it holds something else.")
@link_option
@layout_options
@click.option("--print-env", is_flag=True, help="Print `export NAME=VALUE` lines for the consumer on stdout.")
@sign_key_option
@remote_option
@trust_policy_option
@json_option
@click.pass_context
def ensure(ctx: click.Context, spec: SpecRequest, key: str | None, dest: Path, on_miss: str, do_push: bool, force: bool,
           link: bool, layout: str, container_dir: str | None, print_env: bool, sign_key: api.SigningKey | None,
           as_json: bool) -> None:
    """What a serving container runs at start-up: lookup (local, then remote), fetch, materialise into DEST.

    Exit 0 when DEST holds the engine (a DEST that already holds exactly it is left untouched,
    so a container can run this at every start); 1 on a miss (with the nearest entries), unless
    --on-miss build builds it (and --push publishes it); 3 when the build stored what this
    machine can run and the rest needs another (trtllm without a GPU). An artifact the remote
    serves but Kiln refuses (a malformed entry, a manifest or build record that fails its
    checks) is a miss with a warning, so --on-miss build builds; a remote that cannot be
    reached is an error (exit 2), also with --on-miss build: an outage is not a miss.

    With --key KEY instead of MODEL and spec flags: exactly that build (a prefix of at least
    12 hex digits names it when only one artifact has it), from the store or the remote, with
    no model on disk; --layout is written from the artifact's own verified spec.
    """
    if key is not None:
        refuse_spec_with_key(spec, key)
        if on_miss == "build":
            raise click.UsageError(
                "--on-miss build cannot be used with --key: a build needs the model, and --key names one without it. "
                "Drop --on-miss build, or give MODEL and spec flags instead of --key to build on a miss."
            )
        if do_push:
            raise click.UsageError("--push publishes what --on-miss build builds, and --key builds nothing; drop --push.")
        deliver_by_key(ctx, key, dest, force=force, link=link, layout=layout, container_dir=container_dir,
                       print_env=print_env, as_json=as_json)
        return
    rem = remote(ctx, required=do_push)
    t0 = time.monotonic()
    res = resolve_request(store(ctx), spec)
    with TransferBar("pull"):
        result, path = api.fetch(res, dest, store=store(ctx), remote=rem, replace=force, layout=layout,
                                 container_dir=container_dir, link=link)
    built = pushed = None
    if path is None and on_miss == "build":
        store(ctx).require_writable("building", who="`kiln ensure --on-miss build`")  # before building anything
        warn_damaged(result)
        if not as_json and not print_env:
            click.echo(f"miss: no stored engine for {res.model.ref} with {res.spec.summary()}; building it here (--on-miss build)")
        built, pushed = build_and_push(ctx, spec, res, rem, do_push=do_push, as_json=as_json, sign_key=sign_key)
        result, path = api.fetch(res, dest, store=store(ctx), replace=force, layout=layout, container_dir=container_dir,
                                 link=link)
    extra: dict[str, Any] = {"dest": str(path), "layout": layout, "seconds": round(time.monotonic() - t0, 3)} if path else {}
    if print_env and not as_json:
        import shlex

        warn_damaged(result)
        if not path:
            for line in result.explanation:
                click.echo(line, err=True)
        for name, value in sorted((result.env or {}).items()):
            click.echo(f"export {name}={shlex.quote(value)}")
        ctx.exit(0 if path else 1)
    if built is None:
        report_lookup(result, as_json, extra)
        ctx.exit(0 if path else 1)
    # Built here after a miss: say so (not "hit"), and what was pushed.
    if as_json:
        data = result.to_json()
        status = ("hit" if built.hit else "built") if path else "miss"
        data.update(extra, status=status, hit=built.hit and bool(path), source=built.source if built.hit else None,
                    built=build_json(built), pushed=pushed.to_json() if pushed is not None else None)
        print_json(data)
    else:
        warn_damaged(result)
        click.echo(describe_build(built))
        if pushed is not None:
            click.echo(describe_push(pushed, rem.describe()))  # type: ignore[union-attr]
        if path:
            click.echo(f"materialised into {path} (layout {layout}) in {time.monotonic() - t0:.1f} s")
            for name, value in sorted((result.env or {}).items()):
                click.echo(f"env: {name}={value}")
    ctx.exit(0 if path else 1)


def deliver_by_key(ctx: click.Context, key: str, dest: Path, *, force: bool, link: bool, layout: str,
                   container_dir: str | None, as_json: bool, print_env: bool = False) -> None:
    """`kiln ensure --key` / `kiln fetch --key`: the build with this key into DEST; exit 0 hit, 1 miss."""
    t0 = time.monotonic()
    with TransferBar("pull"):
        result, path = api.fetch_by_key(key, dest, store=store(ctx), remote=remote(ctx), replace=force, layout=layout,
                                        container_dir=container_dir, link=link)
    extra = {"dest": str(path), "layout": layout, "seconds": round(time.monotonic() - t0, 3)} if path else {}
    if print_env and not as_json:
        import shlex

        warn_damaged(result)
        for line in () if path else result.explanation:
            click.echo(line, err=True)
        for name, value in sorted((result.env or {}).items()):
            click.echo(f"export {name}={shlex.quote(value)}")
    else:
        report_lookup(result, as_json, extra)
    ctx.exit(0 if path else 1)
