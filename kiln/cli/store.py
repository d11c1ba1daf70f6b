"""Commands on the local store: `kiln ls`, `show`, `verify`, `gc`, and `kiln store put` (developers)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import click

from .. import api
from ..errors import KilnError
from ._context import remote, store
from ._options import SpecRequest, resolve_request, spec_options, toolchain_option
from ._output import age, console, human_size, json_option, parse_duration, parse_size, print_json

__all__ = ["ls_cmd", "show", "verify", "gc", "store_group"]


@click.command(name="ls")
@click.option("--model", "model_ref", help="Only artifacts of this model ref or Hub id.")
@click.option("--target", "-t")
@click.option("--n-positions", type=int)
@click.option("--batch-size", type=int)
@click.option("--tp-degree", type=int)
@click.option("--dtype")
@toolchain_option
@click.option("--remote", "on_remote", is_flag=True, help="List the remote's artifacts instead of the local store's.")
@json_option
@click.pass_context
def ls_cmd(ctx: click.Context, model_ref: str | None, target: str | None, n_positions: int | None,
           batch_size: int | None, tp_degree: int | None, dtype: str | None, toolchain_pins: Sequence[str],
           on_remote: bool, as_json: bool) -> None:
    """List artifacts in the store or on the remote (filter by any field)."""
    q = api.Query(
        ref=model_ref,
        target=api.normalize_target(target, "--target") if target else None,
        n_positions=n_positions, batch_size=batch_size, tp_degree=tp_degree,
        dtype=api.normalize_dtype(dtype, "--dtype") if dtype else None,
        toolchain=api.parse_toolchain_pins(toolchain_pins),
    )
    if on_remote:
        rem = remote(ctx, required=True)
        assert rem is not None
        entries = sorted((e for e in api.remote_entries(rem) if q.matches(e)), key=lambda e: e.created, reverse=True)
        where = rem.describe()
    else:
        entries = api.list_artifacts(store(ctx), q)
        where = str(store(ctx).root)
    if as_json:
        print_json([e.to_json() for e in entries])
        return
    if not entries:
        click.echo(f"no artifacts in {where}" + (" matching the filters" if q != api.Query() else ""))
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("key", "model", "target", "shape", "dtype", "quant", "size", "age"):
        table.add_column(col, justify="right" if col in ("size", "age") else "left")
    for e in entries:
        s = e.spec
        shape = (f"{s['n_positions']}x{s['batch_size']} tp{s['tp_degree']}" if "n_positions" in s
                 else f"tp{s['tp_degree']}" if "tp_degree" in s else "-")
        table.add_row(
            e.key[:12], str(e.model.get("repo_id") or e.model.get("ref")),
            s["target"] + (f" ({s['stage']})" if "stage" in s else ""), shape, str(s.get("dtype", "-")),
            api.Quantization.from_json(s.get("quantization")).describe(), human_size(e.size), age(e.created),
        )
    console().print(table)
    if on_remote:
        return
    logical = sum(e.size for e in entries)
    unique: dict[str, int] = {}
    for e in entries:
        try:
            unique.update({f.digest: f.size for f in store(ctx).read_manifest(e.manifest).files})
        except KilnError:
            continue
    click.echo(f"{len(entries)} artifact(s), {human_size(logical)} in files, {human_size(sum(unique.values()))} "
               "stored (identical files are kept once)")


@click.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest and build record as JSON.")
@click.pass_context
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show one artifact (REF: key or key prefix, or manifest digest): files, spec, toolchain, provenance."""
    st = store(ctx)
    entry = api.find_artifact(st, ref)
    manifest = st.read_manifest(entry.manifest)
    record = st.read_record(manifest)
    if as_json:
        print_json({"entry": entry.to_json(), "manifest": manifest.to_json(), "record": record})
        return
    click.echo(f"key        {entry.key}")
    click.echo(f"manifest   {entry.manifest}")
    click.echo(f"model      {entry.model.get('ref')}  {entry.model.get('tree_digest')}")
    click.echo(f"spec       {json.dumps({k: v for k, v in entry.spec.items() if k != 'model'}, sort_keys=True)}")
    click.echo(f"toolchain  {json.dumps(entry.toolchain, sort_keys=True)}")
    prov = record.get("provenance", {})
    click.echo(f"built      {prov.get('started')} on {prov.get('host')} in {prov.get('duration_s')} s (kiln {prov.get('kiln_version')})")
    click.echo(f"files      {len(manifest.files)}, {human_size(manifest.total_size)}")
    sharing = _blob_sharing(st, entry.key)
    for f in manifest.files:
        others = sharing.get(f.digest, 0)
        shared = f"  (shared with {others} other artifact{'s' if others > 1 else ''})" if others else ""
        click.echo(f"  {f.digest[7:19]}  {human_size(f.size):>10}  {f.path}{shared}")


def _blob_sharing(st: api.Store, key: str) -> dict[str, int]:
    """digest -> how many *other* artifacts list the same file blob (deduplication at work)."""
    counts: dict[str, int] = {}
    for e in st.iter_entries():
        if e.key == key:
            continue
        try:
            for digest in {f.digest for f in st.read_manifest(e.manifest).files}:
                counts[digest] = counts.get(digest, 0) + 1
        except KilnError:
            continue
    return counts


# --------------------------------------------------------------------------- verify / gc


@click.command()
@json_option
@click.pass_context
def verify(ctx: click.Context, as_json: bool) -> None:
    """Re-hash every blob and check every artifact; exit 1 if anything is corrupt or missing."""
    report = store(ctx).verify()
    if as_json:
        print_json({"ok": report.ok, "blobs_checked": report.blobs_checked, "bytes_checked": report.bytes_checked,
                     "entries_checked": report.entries_checked, "corrupt": list(report.corrupt), "missing": list(report.missing)})
    else:
        for line in report.corrupt + report.missing:
            click.echo(f"kiln: CORRUPT: {line}", err=True)
        click.echo(f"{'ok' if report.ok else 'FAILED'}: {report.blobs_checked} blobs ({human_size(report.bytes_checked)}), "
                   f"{report.entries_checked} artifacts checked; {len(report.corrupt)} corrupt, {len(report.missing)} missing")
    ctx.exit(0 if report.ok else 1)


@click.command()
@click.option("--max-size", help="Evict least recently used artifacts until the store is at most this size (e.g. 50G).")
@click.option("--older-than", help="Evict artifacts not used for this long (e.g. 30d, 12h).")
@click.option("--dry-run", is_flag=True, help="Show the plan; remove nothing.")
@click.option("--remote", "on_remote", is_flag=True, help="Collect the remote: delete blobs no manifest in it references.")
@click.option("--grace", default="24h", show_default=True, help="With --remote: keep unreferenced blobs younger than this (pushes in flight).")
@json_option
@click.pass_context
def gc(ctx: click.Context, max_size: str | None, older_than: str | None, dry_run: bool, on_remote: bool, grace: str,
       as_json: bool) -> None:
    """Remove unreferenced blobs, leftovers and failed-build logs older than 30 days; with --max-size/--older-than, evict LRU artifacts."""
    if on_remote:
        if max_size or older_than:
            raise click.UsageError("--max-size/--older-than apply to the local store only.")
        rem = remote(ctx, required=True)
        assert rem is not None
        rplan = api.remote_gc(rem, grace_s=parse_duration(grace), dry_run=dry_run)
        if as_json:
            print_json({"dry_run": dry_run, "blobs": [{"key": k, "size": n} for k, n in rplan.blobs],
                         "bytes_freed": rplan.bytes, "kept": rplan.kept, "young": rplan.young,
                         "broken_entries": list(rplan.broken_entries)})
            return
        for b in rplan.broken_entries:
            click.echo(f"kiln: WARNING: {b}", err=True)
        click.echo(f"{'would delete' if dry_run else 'deleted'} {len(rplan.blobs)} unreferenced blobs ({human_size(rplan.bytes)}) "
                   f"from {rem.describe()}; {rplan.kept} referenced, {rplan.young} unreferenced but younger than {grace}")
        return
    plan = store(ctx).gc(
        max_size=parse_size(max_size) if max_size else None,
        older_than=parse_duration(older_than) if older_than else None,
        dry_run=dry_run,
    )
    verb = "would remove" if dry_run else "removed"
    if as_json:
        print_json({
            "dry_run": dry_run,
            "evicted": [e.to_json() for e in plan.entries],
            "blobs": [{"digest": d, "size": s} for d, s in plan.blobs],
            "temp_paths": [str(p) for p in plan.temp_paths],
            "logs": [str(p) for p in plan.logs],
            "bytes_freed": plan.blob_bytes,
            "bytes_kept": plan.kept_bytes,
        })
        return
    for e in plan.entries:
        click.echo(f"{verb} artifact {e.key[:12]} {e.spec.get('model')} {e.spec.get('target')} ({human_size(e.size)}, used {age(e.created)} ago)")
    click.echo(f"{verb} {len(plan.entries)} artifacts, {len(plan.blobs)} unreferenced blobs ({human_size(plan.blob_bytes)}), "
               f"{len(plan.temp_paths)} temp leftovers, {len(plan.logs)} failed-build logs older than 30 days; "
               f"{human_size(plan.kept_bytes)} kept")


# --------------------------------------------------------------------------- store (developer commands)


@click.group(name="store")
def store_group() -> None:
    """Developer commands on the local store."""


@store_group.command(name="put")
@click.argument("artifact_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@spec_options
@json_option
@click.pass_context
def store_put(ctx: click.Context, artifact_dir: Path, spec: SpecRequest, as_json: bool) -> None:
    """Publish ARTIFACT_DIR as the artifact of MODEL + spec (as a build would, without compiling)."""
    res = resolve_request(store(ctx), spec)
    t0 = time.monotonic()
    entry = api.put(res, artifact_dir, store=store(ctx), duration_s=0.0)
    if as_json:
        print_json({"key": entry.key, "manifest": entry.manifest, "size": entry.size, "files": entry.files,
                     "seconds": round(time.monotonic() - t0, 3)})
    else:
        click.echo(f"published {entry.key}  {entry.files} files, {human_size(entry.size)}  manifest {entry.manifest}")
