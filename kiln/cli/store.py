"""Commands on the store: `kiln ls`, `show`, `verify`, and `kiln store put` (developers).

``ls`` and ``show`` read the remote instead with ``--remote [URL]``; nothing is pulled.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import click

from .. import api
from ..errors import KilnError, SpecError, TrustError
from ._context import remote, store
from ._options import (SpecRequest, remote_flag_option, resolve_request, spec_options, toolchain_option,
                       trust_policy_option, use_remote_flag)
from ._output import Verbatim, age, console, human_size, iso_time, json_option, present, print_json
from ._refs import entry_json, find_remote_artifact

__all__ = ["ls_cmd", "show", "verify", "store_group"]


@click.command(name="ls")
@click.option("--model", "model_ref", help="Only artifacts of this model ref or Hub id.")
@click.option("--target", "-t")
@click.option("--n-positions", type=int)
@click.option("--batch-size", type=int)
@click.option("--tp-degree", type=int)
@click.option("--dtype")
@click.option("--consumer", metavar="NAME[:VERSION]",
              help="Only artifacts built for this consumer (e.g. lmi-neuronx:0.30.0; a NAME alone: any release).")
@toolchain_option
@remote_flag_option("List the remote's artifacts instead of the local store's.")
@click.option("--no-trunc", is_flag=True, help="Full keys and values, even on a terminal (never cut when piped).")
@click.option("--quiet", "-q", is_flag=True, help="Only the full keys, one per line.")
@trust_policy_option
@json_option
@click.pass_context
def ls_cmd(ctx: click.Context, model_ref: str | None, target: str | None, n_positions: int | None,
           batch_size: int | None, tp_degree: int | None, dtype: str | None, consumer: str | None,
           toolchain_pins: Sequence[str], on_remote: str | None, no_trunc: bool, quiet: bool, as_json: bool) -> None:
    """List artifacts in the store or on the remote (filter by any field), newest first.

    On a terminal keys are shortened to 12 digits; piped, or with --no-trunc, every value is
    printed whole (`kiln ls | awk '{print $1}'`); -q prints only the keys.
    """
    q = api.Query(
        ref=model_ref,
        target=api.normalize_target(target, "--target") if target else None,
        n_positions=n_positions, batch_size=batch_size, tp_degree=tp_degree,
        dtype=api.normalize_dtype(dtype, "--dtype") if dtype else None,
        toolchain=api.parse_toolchain_pins(toolchain_pins), consumer=consumer,
    )
    st = store(ctx)
    if use_remote_flag(ctx, on_remote):
        rem = remote(ctx, required=True)
        assert rem is not None
        entries = sorted((e for e in api.remote_entries(rem) if q.matches(e)), key=lambda e: e.created, reverse=True)
        where, used = rem.describe(), {e.key: None for e in entries}
    else:
        entries = api.list_artifacts(st, q)
        where, used = str(st.root), {e.key: iso_time(st.last_used(e)) for e in entries}
    if as_json:
        # Who signed each (the key each signature names, unverified: `kiln show` verifies).
        rem_ = remote(ctx) if where != str(st.root) else None
        print_json([{**entry_json(e, used[e.key]), "signatures": _signers(st, e, None, rem_)} for e in entries])
        return
    if quiet:
        for e in entries:
            click.echo(e.key)
        return
    if not entries:
        click.echo(f"no artifacts in {where}" + (" matching the filters" if q != api.Query() else ""))
        return
    _table(entries, full=no_trunc or not sys.stdout.isatty())
    if where != str(st.root):
        return
    logical = sum(e.size for e in entries)
    unique: dict[str, int] = {}
    for e in entries:
        try:
            unique.update({f.digest: f.size for f in st.read_manifest(e.manifest).files})
        except KilnError:
            continue
    # On stderr when piped: stdout then holds only the header and one line per artifact.
    click.echo(f"{len(entries)} artifact(s), {human_size(logical)} in files, {human_size(sum(unique.values()))} "
               "stored (identical files are kept once)", err=not sys.stdout.isatty())


def _table(entries: list[api.IndexEntry], *, full: bool) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("key", "model", "target", "shape", "dtype", "quant", "size", "age"):
        table.add_column(col, justify="right" if col in ("size", "age") else "left", no_wrap=full)
    for e in entries:
        s = e.spec
        shape = (f"{s['n_positions']}x{s['batch_size']} tp{s['tp_degree']}" if "n_positions" in s
                 else f"tp{s['tp_degree']}" if "tp_degree" in s else "-")
        table.add_row(
            e.key if full else e.key[:12], str(e.model.get("repo_id") or e.model.get("ref")),
            s["target"] + (f" ({s['stage']})" if "stage" in s else "")
            + (f" for {api.entry_consumer(e)}" if api.entry_consumer(e) else ""), shape, str(s.get("dtype", "-")),
            api.Quantization.from_json(s.get("quantization")).describe(), human_size(e.size), age(e.created),
        )
    console(no_trunc=full).print(table)


@click.command()
@click.argument("ref", required=False)
@remote_flag_option("Show the artifact as the remote holds it (index entry, manifest, build record; no blob is pulled).")
@trust_policy_option
@json_option
@click.pass_context
def show(ctx: click.Context, ref: str | None, on_remote: str | None, as_json: bool) -> None:
    """Show one artifact (REF: key or key prefix, or manifest digest): files, spec, toolchain, provenance."""
    if ref is None and on_remote:  # `kiln show --remote KEY`: KEY is the artifact, not a URL
        ref, on_remote = on_remote, ""
    if ref is None:
        raise SpecError("name the artifact: kiln show KEY (a key, a prefix of at least 6 digits, or a manifest digest).")
    st = store(ctx)
    sharing: dict[str, int] = {}
    if use_remote_flag(ctx, on_remote):
        rem = remote(ctx, required=True)
        assert rem is not None
        entry = find_remote_artifact(rem, ref)
        manifest, record = api.read_remote_artifact(rem, entry)
        source, last_used = rem.describe(), None
    else:
        entry = api.find_artifact(st, ref)
        manifest = st.read_manifest(entry.manifest)
        record = st.read_record(manifest)
        source, last_used = "local", iso_time(st.last_used(entry))
        sharing = _blob_sharing(st, entry.key)
    signers = _signers(st, entry, manifest, rem if source != "local" else None)
    if as_json:
        print_json({"source": "remote" if source != "local" else "local", "entry": entry_json(entry, last_used),
                    "manifest": Verbatim(manifest.to_json()), "record": Verbatim(record), "signatures": signers})
        return
    click.echo(f"key        {entry.key}")
    click.echo(f"where      {source if source != 'local' else st.root}")
    click.echo(f"manifest   {entry.manifest}")
    click.echo(f"model      {entry.model.get('ref')}  {entry.model.get('tree_digest')}")
    click.echo(f"spec       {json.dumps(_shown_spec(entry), sort_keys=True)}")
    click.echo(f"toolchain  {json.dumps(entry.toolchain, sort_keys=True)}")
    prov = record.get("provenance", {})
    click.echo(f"built      {prov.get('started')} on {prov.get('host')} in {prov.get('duration_s')} s (kiln {prov.get('kiln_version')})")
    if last_used:
        click.echo(f"last used  {last_used}")
    for s in signers or [None]:
        if s is None:
            click.echo("signed     no (unsigned)")
            continue
        state = {True: "verified", False: "DOES NOT VERIFY", None: "not verified (no trusted key for it)"}[s["verified"]]
        click.echo(f"signed     by {s['key'] or 'a key'} {s['fingerprint']}: {state}")
    click.echo(f"files      {len(manifest.files)}, {human_size(manifest.total_size)}")
    for f in manifest.files:
        others = sharing.get(f.digest, 0)
        shared = f"  (shared with {others} other artifact{'s' if others > 1 else ''})" if others else ""
        click.echo(f"  {f.digest[7:19]}  {human_size(f.size):>10}  {f.path}{shared}")


def _signers(st: api.Store, entry: api.IndexEntry, manifest: api.Manifest | None,
             rem: api.Remote | None) -> list[dict[str, Any]]:
    """Who signed ``entry`` (locally, or on ``rem``), verified where the policy has the key and
    ``manifest`` is given."""
    sigs = api.remote_signatures(rem, entry.manifest, entry.files)[0] if rem is not None else st.signatures_of(entry)
    return api.describe_signers(sigs, entry, manifest, st.trust)


def _shown_spec(entry: api.IndexEntry) -> Any:
    return present({k: v for k, v in entry.spec.items() if k != "model"})


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


@click.command()
@click.option("--signatures", "check_signatures", is_flag=True,
              help="Also check every stored signature against the trust policy's keys and --public-key.")
@click.option("--public-key", "public_keys", multiple=True, metavar="PUB",
              help="With --signatures: a PEM public key (or awskms:///alias/NAME) to check signatures with; repeatable.")
@trust_policy_option
@json_option
@click.pass_context
def verify(ctx: click.Context, check_signatures: bool, public_keys: Sequence[str], as_json: bool) -> None:
    """Re-hash every blob and check every artifact; exit 1 if anything is corrupt or missing.

    With --signatures, every stored signature is verified too (against the keys of the trust
    policy and --public-key): exit 1 also when one fails, or when the policy says `require:
    signed` and an artifact has no signature it accepts. A signature by a key neither names is
    listed as not checked (a fingerprint alone proves nothing).
    """
    if public_keys and not check_signatures:
        raise click.UsageError("--public-key is for checking signatures: add --signatures.")
    st = store(ctx)
    report = st.verify()
    sig_report = _verify_signatures(st, public_keys) if check_signatures else None
    ok = report.ok and (sig_report is None or sig_report["ok"])
    if as_json:
        data: dict[str, Any] = {"ok": ok, "blobs_checked": report.blobs_checked, "bytes_checked": report.bytes_checked,
                                "entries_checked": report.entries_checked, "corrupt": list(report.corrupt),
                                "missing": list(report.missing), "unread": list(report.unread)}
        if sig_report is not None:
            data["signatures"] = sig_report
        print_json(data)
    else:
        for line in report.corrupt + report.missing:
            click.echo(f"kiln: CORRUPT: {line}", err=True)
        for line in report.unread:
            click.echo(f"kiln: NOT CHECKED: {line}", err=True)
        if sig_report is not None:
            for line in sig_report["failed"]:
                click.echo(f"kiln: BAD SIGNATURE: {line}", err=True)
            for line in sig_report["refused"]:
                click.echo(f"kiln: REFUSED: {line}", err=True)
            for line in sig_report["unknown_key"]:
                click.echo(f"kiln: NOT CHECKED: {line}", err=True)
        click.echo(f"{'ok' if ok else 'FAILED'}: {report.blobs_checked} blobs ({human_size(report.bytes_checked)}), "
                   f"{report.entries_checked} artifacts checked; {len(report.corrupt)} corrupt, {len(report.missing)} missing"
                   + (f"; {sig_report['verified']} of {sig_report['checked']} signatures verified, "
                      f"{len(sig_report['failed'])} bad, {len(sig_report['unsigned'])} artifacts unsigned"
                      if sig_report is not None else ""))
    ctx.exit(0 if ok else 1)


def _verify_signatures(st: api.Store, public_keys: Sequence[str]) -> dict[str, Any]:
    """Every stored signature, checked with the policy's keys and ``public_keys``."""
    checker = api.keys_policy(public_keys, st.trust)
    checked = verified = 0
    failed: list[str] = []
    unknown: list[str] = []
    unsigned: list[str] = []
    refused: list[str] = []
    for entry in st.iter_entries():
        try:
            manifest = st.read_manifest(entry.manifest)
        except KilnError:
            continue  # the blob check above reports it
        signers = api.describe_signers(st.signatures_of(entry), entry, manifest, checker)
        if not signers:
            unsigned.append(entry.key)
        for s in signers:
            checked += 1
            where = f"artifact {entry.key[:12]}, key {s['fingerprint']}"
            if s["verified"] is True:
                verified += 1
            elif s["verified"] is False:
                failed.append(f"{where} ({s['key']}): does not verify for this artifact")
            else:
                unknown.append(f"{where}: no --public-key or policy key to check it with")
        if st.trust is not None and st.trust.require_signed:
            try:
                st.check_trusted(entry, manifest)
            except TrustError as e:
                refused.append(str(e))
    return {"ok": not failed and not refused, "checked": checked, "verified": verified, "failed": failed,
            "unknown_key": unknown, "unsigned": unsigned, "refused": refused}


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
    store(ctx).require_writable("publishing", who="`kiln store put`")  # before hashing the model
    res = resolve_request(store(ctx), spec)
    t0 = time.monotonic()
    entry = api.put(res, artifact_dir, store=store(ctx), duration_s=0.0)
    if as_json:
        print_json({"status": "published", "key": entry.key, "manifest": entry.manifest, "size": entry.size,
                    "files": entry.files, "seconds": round(time.monotonic() - t0, 3)})
    else:
        click.echo(f"published {entry.key}  {entry.files} files, {human_size(entry.size)}  manifest {entry.manifest}")
