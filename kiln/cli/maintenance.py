"""Destructive commands on the store, each computing its plan (with sizes) first: `kiln gc`, `kiln rm`.

Both show the plan with ``--dry-run`` and remove nothing then. Removal order is the store's
(DESIGN invariant 2 in reverse): index entries first, then — through the store's gc, under
its exclusive lock — the blobs no remaining artifact references, so a reader never finds an
entry whose blobs are gone and a blob shared with a remaining artifact always stays.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import click

from .. import api
from ..errors import KilnError, NotFoundError, SpecError
from ._context import remote, store
from ._options import SpecRequest, remote_flag_option, resolve_request, spec_flag_options, use_remote_flag
from ._output import age, human_size, iso_time, json_option, parse_duration, parse_size, print_json
from ._refs import entry_json, looks_like_key

__all__ = ["gc", "rm"]


@click.command()
@click.option("--max-size", help="Evict least recently used artifacts until the store is at most this size (e.g. 50G).")
@click.option("--older-than", help="Evict artifacts not used for this long (e.g. 30d, 12h).")
@click.option("--dry-run", is_flag=True, help="Show the plan; remove nothing.")
@remote_flag_option("Collect the remote: delete blobs no manifest in it references.")
@click.option("--grace", default="24h", show_default=True, help="With --remote: keep unreferenced blobs younger than this (pushes in flight).")
@json_option
@click.pass_context
def gc(ctx: click.Context, max_size: str | None, older_than: str | None, dry_run: bool, on_remote: str | None,
       grace: str, as_json: bool) -> None:
    """Remove unreferenced blobs, leftovers and failed-build logs older than 30 days; with --max-size/--older-than, evict LRU artifacts."""
    if use_remote_flag(ctx, on_remote):
        if max_size or older_than:
            raise SpecError("--max-size/--older-than apply to the local store only; drop them with --remote.")
        rem = remote(ctx, required=True)
        assert rem is not None
        rplan = api.remote_gc(rem, grace_s=parse_duration(grace), dry_run=dry_run)
        if as_json:
            print_json({"dry_run": dry_run, "remote": rem.describe(), "blobs": [{"key": k, "size": n} for k, n in rplan.blobs],
                        "bytes_freed": rplan.bytes, "kept": rplan.kept, "young": rplan.young,
                        "broken_entries": list(rplan.broken_entries), "not_removed": rplan.not_removed,
                        "relisted": rplan.relisted})
            return
        for b in rplan.broken_entries:
            click.echo(f"kiln: WARNING: {b}", err=True)
        if rplan.not_removed:
            click.echo(f"kiln: note: {rplan.not_removed}", err=True)
        if rplan.relisted:
            click.echo(f"listed again {rplan.relisted} objects whose listing a killed or concurrent push had lost", err=True)
        click.echo(f"{'would delete' if dry_run else 'deleted'} {len(rplan.blobs)} unreferenced blobs ({human_size(rplan.bytes)}) "
                   f"from {rem.describe()}; {rplan.kept} referenced, {rplan.young} unreferenced but younger than {grace}")
        return
    st = store(ctx)
    max_bytes = parse_size(max_size) if max_size else None
    max_age = parse_duration(older_than) if older_than else None
    plan = st.gc(max_size=max_bytes, older_than=max_age, dry_run=dry_run)
    used = plan.last_used  # read by gc before it removed the entries (last use is the entry file's mtime)
    verb = "would remove" if dry_run else "removed"
    if as_json:
        print_json({
            "dry_run": dry_run,
            "evicted": [entry_json(e, iso_time(used.get(e.key, 0.0))) for e in plan.entries],
            "damaged_entries": [{"path": str(d.path), "key": d.key, "reason": d.reason} for d in plan.damaged],
            "kept_unreadable": [{"path": str(k.path), "key": k.key, "manifest": k.manifest, "reason": k.reason,
                                 "blobs": len(k.blobs)} for k in plan.kept_unreadable],
            "blobs": [{"digest": d, "size": s} for d, s in plan.blobs],
            "temp_paths": [str(p) for p in plan.temp_paths],
            "logs": [str(p) for p in plan.logs],
            "bytes_freed": plan.blob_bytes,
            "bytes_kept": plan.kept_bytes,
        })
        return
    for k in plan.kept_unreadable:
        click.echo(k.describe())
    for d in plan.damaged:
        click.echo(f"{verb} {d.describe()}")
    for e in plan.entries:
        last = used.get(e.key, 0.0)
        click.echo(f"{verb} artifact {e.key[:12]} {e.spec.get('model')} {e.spec.get('target')} ({human_size(e.size)}, "
                   + (f"last used {age(last)} ago)" if last else "never used)"))
    click.echo(f"{verb} {len(plan.entries)} artifacts, {len(plan.blobs)} unreferenced blobs ({human_size(plan.blob_bytes)}), "
               f"{len(plan.temp_paths)} temp leftovers, {len(plan.logs)} failed-build logs older than 30 days"
               + (f", {len(plan.damaged)} damaged index entries" if plan.damaged else "")
               + f"; {human_size(plan.kept_bytes)} kept"
               + (f" ({len(plan.kept_unreadable)} artifacts this Kiln cannot read kept whole)" if plan.kept_unreadable else ""))


@click.command(name="rm")
@click.argument("refs", nargs=-1, metavar="[REF]...")
@spec_flag_options
@click.option("--dry-run", is_flag=True, help="Show the plan (what goes, the bytes it frees); remove nothing.")
@json_option
@click.pass_context
def rm(ctx: click.Context, refs: Sequence[str], spec: SpecRequest, dry_run: bool, as_json: bool) -> None:
    """Remove artifacts from the local store.

    REF is a key, a key prefix of at least 6 hex digits, or a manifest digest (several may be
    given); or name one MODEL with spec flags (`kiln rm ./model --target torch-aoti
    --n-positions 512`) to remove what a lookup of that spec would find. The plan lists each
    artifact and the bytes freed: only blobs no remaining artifact shares. Index entries go
    first, then the unreferenced blobs (through gc). The remote is never touched.
    """
    st = store(ctx)
    doomed = _artifacts_named(st, refs, spec)
    freed, shared = _freed_blobs(st, doomed)
    used = {e.key: iso_time(st.last_used(e)) for e in doomed}
    blobs: list[tuple[str, int]] = sorted(freed.items())
    if not dry_run:
        for e in doomed:
            st.remove_entry(e)  # first: no reader may find an entry whose blobs are going
        collected = st.gc()  # under the exclusive lock: removes exactly what nothing references now
        blobs = list(collected.blobs)
    freed_bytes = sum(size for _, size in blobs)
    if as_json:
        print_json({"dry_run": dry_run, "removed": [entry_json(e, used[e.key]) for e in doomed],
                    "blobs": [{"digest": d, "size": s} for d, s in blobs], "bytes_freed": freed_bytes,
                    "bytes_shared": shared})
        return
    verb = "would remove" if dry_run else "removed"
    for e in doomed:
        s = e.spec
        click.echo(f"{verb} {e.key[:12]}  {e.model.get('repo_id') or e.model.get('ref')}  {s.get('target')}"
                   + (f" ({s['stage']})" if "stage" in s else "") + f"  {human_size(e.size)}")
    click.echo(f"{verb} {len(doomed)} artifact(s): {'frees' if dry_run else 'freed'} {human_size(freed_bytes)} "
               f"({len(blobs)} blobs)" + (f"; {human_size(shared)} shared with other artifacts stays" if shared else ""))


def _artifacts_named(st: api.Store, refs: Sequence[str], spec: SpecRequest) -> list[api.IndexEntry]:
    """The entries REF… (keys, prefixes) or MODEL + spec flags name; an error if any names none."""
    keys = [r for r in refs if looks_like_key(r)]
    models = [r for r in refs if not looks_like_key(r)]
    spec_given = spec.names_a_spec or bool(spec.given_flags())
    if models and not spec_given:
        raise SpecError(f"{models[0]!r} is not a key (give at least 6 hex digits of one, see `kiln ls`); to remove "
                        f"the artifacts of a spec, add its flags: kiln rm {models[0]} --target … --n-positions …")
    if len(models) > 1:
        raise SpecError(f"{', '.join(repr(m) for m in models)} are not keys; name artifacts by key, or one MODEL "
                        "with spec flags.")
    if models and keys:
        raise SpecError(f"give keys, or one MODEL with spec flags, not both (got {keys[0]!r} and {models[0]!r}).")
    if not refs and not spec_given:
        raise SpecError("name what to remove: KEY… (see `kiln ls`), or MODEL with spec flags.")
    found: dict[str, api.IndexEntry] = {}
    for k in keys:
        e = api.find_artifact(st, k)
        found[e.key] = e
    if spec_given and not keys:
        request = dataclasses.replace(spec, model=models[0] if models else None)
        if not request.names_a_spec:
            raise SpecError("spec flags need a MODEL (or --from-env / --serving-properties): kiln rm MODEL --target …")
        for e in _by_spec(st, resolve_request(st, request)):
            found[e.key] = e
    return list(found.values())


def _by_spec(st: api.Store, res: api.Resolution) -> list[api.IndexEntry]:
    """Local entries a lookup of ``res`` would consider (damaged ones too: they are what one removes).

    Same rule as the lookup: this model's weights, this shape, and the toolchain where the
    resolution knows it (all toolchains where it is not installed and not pinned).
    """
    hits = [e for e in st.iter_entries(res.model_hex)
            if {k: v for k, v in e.spec.items() if k != "model"} == res.shape
            and all(v is None or e.toolchain.get(k) == v for k, v in res.toolchain.items())]
    if not hits:
        raise NotFoundError(f"no local artifact for {res.model.ref} with {res.spec.summary()} in {st.root}; "
                            "see `kiln ls`.")
    return hits


def _blob_sizes(st: api.Store, e: api.IndexEntry) -> dict[str, int]:
    """Every blob an entry keeps alive (manifest, build record, files) with its size."""
    def size_of(digest: str) -> int:
        try:
            return st.blob_path(digest).stat().st_size
        except OSError:
            return 0

    out = {e.manifest: size_of(e.manifest)}
    try:
        m = st.read_manifest(e.manifest)
    except KilnError:
        return out  # unreadable manifest: only the manifest blob itself is known
    out[m.config.digest] = m.config.size
    out.update({f.digest: f.size for f in m.files})
    return out


def _freed_blobs(st: api.Store, doomed: list[api.IndexEntry]) -> tuple[dict[str, int], int]:
    """(blobs only the doomed entries reference, with sizes; bytes they share with remaining entries)."""
    gone = {e.key for e in doomed}
    kept: set[str] = set()
    for e in st.iter_entries():
        if e.key not in gone:
            kept.update(_blob_sizes(st, e))
    mine: dict[str, int] = {}
    for e in doomed:
        mine.update(_blob_sizes(st, e))
    freed = {d: s for d, s in mine.items() if d not in kept}
    return freed, sum(s for d, s in mine.items() if d in kept)
