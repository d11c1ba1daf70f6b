"""Local gc treats whatever it cannot read as live, and says so; only an artifact that can never
be served (its manifest gone, or its bytes not its digest) is removed, and that is reported too.

Before (issue 12): an entry whose manifest this Kiln cannot parse — a newer Kiln's artifactType,
more layers than this version allows, an entry of a newer schema — was "broken": gc evicted it
and deleted every blob of a live artifact that a newer Kiln sharing KILN_HOME still serves.

The newer Kiln's documents are made here as a newer Kiln would write them: a real artifact
published by this Kiln, then its manifest rewritten (stored under its own digest, so it is
intact) and its entry pointed at it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from kiln.cache import Store
from kiln.errors import StoreError
from tests.cli._helpers import AOTI, artifact_dir, put
from tests.cli.test_json_schemas import check
from tests.conftest import run_kiln

MANIFEST_TITLE = "org.opencontainers.image.title"


def _store() -> Store:
    return Store(Path(os.environ["KILN_HOME"]))


def _two(tmp_path: Path, model: Path) -> tuple[str, str]:
    """Artifacts A (batch 1) and B (batch 2) sharing one weights blob."""
    a = put(model, artifact_dir(tmp_path / "a", b"engine A" * 100), *AOTI)
    b = put(model, artifact_dir(tmp_path / "b", b"engine B" * 100), *AOTI, "--batch-size", "2")
    return a, b


def _entry(store: Store, key: str):  # type: ignore[no-untyped-def]
    return next(e for e in store.iter_entries() if e.key == key)


def _entry_file(store: Store, key: str) -> Path:
    [path] = store.index_dir.glob(f"*/{key}.json")
    return path


def _write_blob(store: Store, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = store.blob_path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o444)
    return digest


def _point_entry_at(store: Store, key: str, manifest: str, **changes: object) -> None:
    path = _entry_file(store, key)
    doc = json.loads(path.read_bytes())
    doc.update(manifest=manifest, **changes)
    os.chmod(path, 0o644)
    path.write_text(json.dumps(doc, sort_keys=True, indent=1))


def _newer_manifest(store: Store, key: str, how: str) -> tuple[str, set[str]]:
    """Rewrite artifact ``key``'s manifest as a newer Kiln would; return (its digest, the blobs it names)."""
    old = _entry(store, key).manifest
    doc = json.loads(store.blob_path(old).read_bytes())
    named = {doc["config"]["digest"], *(layer["digest"] for layer in doc["layers"])}
    if how == "artifact-type":
        doc["artifactType"] = "application/vnd.kiln.artifact.v2+json"
    elif how == "too-many-layers":
        from kiln.manifests._manifest import MAX_FILES

        first = doc["layers"][0]
        doc["layers"] += [dict(first, annotations={MANIFEST_TITLE: f"shard/{i}"}) for i in range(MAX_FILES)]
    elif how == "config-media-type":
        doc["config"]["mediaType"] = "application/vnd.kiln.build-record.v2+json"
    data = json.dumps(doc, separators=(",", ":")).encode()
    return _write_blob(store, data), named


@pytest.mark.parametrize("how", ["artifact-type", "too-many-layers", "config-media-type"])
def test_gc_keeps_an_artifact_whose_manifest_this_kiln_cannot_parse(tmp_path: Path, fake_model: Path, how: str) -> None:
    store = _store()
    a, _ = _two(tmp_path, fake_model)
    manifest, named = _newer_manifest(store, a, how)
    old_manifest = _entry(store, a).manifest
    _point_entry_at(store, a, manifest)
    with store.writer_lock():
        stray, _ = store.put_bytes(b"nothing refers to this")

    doc = check("gc", run_kiln("gc", "--json"))
    gone = {x["digest"] for x in doc["blobs"]}
    assert gone == {stray, old_manifest}, doc  # the newer Kiln's blobs all stay
    for d in named | {manifest}:
        assert store.has_blob(d), d
    assert _entry_file(store, a).exists()
    [kept] = doc["kept_unreadable"]
    assert kept["key"] == a and kept["manifest"] == manifest
    assert kept["blobs"] == len(named | {manifest})
    assert {"artifact-type": "artifactType", "too-many-layers": "exceeds", "config-media-type": "config"}[how] \
        in kept["reason"], kept
    assert doc["damaged_entries"] == []

    human = run_kiln("gc")
    assert human.returncode == 0, human.stderr
    assert f"kept artifact {a[:12]}: its manifest is not one this Kiln reads" in human.stdout, human.stdout
    assert f"its {len(named | {manifest})} blobs are kept" in human.stdout
    assert run_kiln("lookup", str(fake_model), *AOTI, "--batch-size", "2").returncode == 0  # B is served


def test_gc_keeps_an_entry_of_a_newer_schema_and_the_blobs_it_names(tmp_path: Path, fake_model: Path) -> None:
    store = _store()
    a, _ = _two(tmp_path, fake_model)
    manifest, named = _newer_manifest(store, a, "artifact-type")
    _point_entry_at(store, a, manifest, schema=2, replicas=["sha256:" + "0" * 64])
    doc = check("gc", run_kiln("gc", "--json"))
    for d in named | {manifest}:
        assert store.has_blob(d), d
    assert _entry_file(store, a).exists()
    [kept] = doc["kept_unreadable"]
    assert kept["path"] == str(_entry_file(store, a)) and "schema" in kept["reason"]
    assert doc["damaged_entries"] == []


def test_gc_deletes_nothing_when_a_manifest_is_too_large_to_scan(
    tmp_path: Path, fake_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Store level: the scan bound is lowered so a real manifest exceeds it."""
    import kiln.cache._gc as gc_module

    store = _store()
    a, _ = _two(tmp_path, fake_model)
    manifest, _ = _newer_manifest(store, a, "artifact-type")
    _point_entry_at(store, a, manifest)
    with store.writer_lock():
        stray, _ = store.put_bytes(b"nothing refers to this")
    monkeypatch.setattr(gc_module, "MAX_SCAN_BYTES", 100)
    before = sorted(d for d, _ in store.all_blobs())
    with pytest.raises(StoreError) as err:
        store.gc()
    message = str(err.value)
    assert "deleted nothing" in message and manifest in message and "larger than" in message, message
    assert sorted(d for d, _ in store.all_blobs()) == before and store.has_blob(stray)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_gc_removes_an_entry_whose_manifest_is_missing_or_corrupt(tmp_path: Path, fake_model: Path, damage: str) -> None:
    store = _store()
    a, _ = _two(tmp_path, fake_model)
    manifest = _entry(store, a).manifest
    blob = store.blob_path(manifest)
    os.chmod(blob, 0o644)
    if damage == "missing":
        blob.unlink()
    else:
        blob.write_bytes(blob.read_bytes().replace(b"engine.pt2", b"engine.pt3"))
    path = _entry_file(store, a)

    dry = check("gc", run_kiln("gc", "--dry-run", "--json"))
    assert path.exists() and [d["path"] for d in dry["damaged_entries"]] == [str(path)]
    doc = check("gc", run_kiln("gc", "--json"))
    [bad] = doc["damaged_entries"]
    assert bad["path"] == str(path) and bad["key"] == a
    assert ("missing" if damage == "missing" else "does not match its digest") in bad["reason"], bad
    assert doc["evicted"] == [] and doc["kept_unreadable"] == []
    assert not path.exists()
    assert run_kiln("verify").returncode == 0  # A's own blobs went with it; B's are intact
    assert run_kiln("lookup", str(fake_model), *AOTI, "--batch-size", "2").returncode == 0

    human = run_kiln("gc", "--dry-run")
    assert "damaged" not in human.stdout  # nothing left to report


def test_human_gc_reports_a_removed_damaged_entry(tmp_path: Path, fake_model: Path) -> None:
    store = _store()
    a, _ = _two(tmp_path, fake_model)
    blob = store.blob_path(_entry(store, a).manifest)
    os.chmod(blob, 0o644)
    blob.unlink()
    path = _entry_file(store, a)
    r = run_kiln("gc")
    assert r.returncode == 0, r.stderr
    assert f"removed damaged index entry {path}" in r.stdout and "manifest" in r.stdout, r.stdout


def test_verify_reports_a_newer_kilns_artifact_as_not_checked_without_failing(tmp_path: Path, fake_model: Path) -> None:
    """A store shared with a newer Kiln verifies: its artifacts are listed as not checked (before,
    verify failed on them, so a shared store could never pass)."""
    store = _store()
    a, _ = _two(tmp_path, fake_model)
    manifest, _ = _newer_manifest(store, a, "artifact-type")
    _point_entry_at(store, a, manifest)
    r = run_kiln("verify", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["ok"], r.stdout + r.stderr
    [line] = doc["unread"]
    assert a[:12] in line and "This Kiln cannot read it" in line, line
    assert doc["missing"] == [] and doc["corrupt"] == []
    human = run_kiln("verify")
    assert human.returncode == 0 and "kiln: NOT CHECKED:" in human.stderr, human.stderr
    # Real damage still fails next to it.
    store.blob_path(manifest).chmod(0o644)
    os.unlink(store.blob_path(manifest))
    r = run_kiln("verify", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["missing"], r.stdout


def test_gc_keeps_an_entry_whose_spec_is_not_in_this_kilns_form(tmp_path: Path, fake_model: Path) -> None:
    """Well-formed, but its spec is not written the way this version writes it (a SmoothQuant
    alpha spelled "0.50"): readers refuse it, yet it may be another Kiln version's — gc keeps it
    and its blobs instead of deleting them as damage (review finding)."""
    store = _store()
    a, _ = _two(tmp_path, fake_model)
    doc = json.loads(_entry_file(store, a).read_bytes())
    manifest = store.read_manifest(doc["manifest"])
    named = {doc["manifest"], manifest.config.digest, *(f.digest for f in manifest.files)}
    spec = dict(doc["spec"], quantization={"smoothquant_alpha": "0.50", "per_token": False, "per_channel": False,
                                           "int8_kv_cache": False})
    _point_entry_at(store, a, doc["manifest"], spec=spec)
    out = check("gc", run_kiln("gc", "--json"))
    assert out["damaged_entries"] == [] and _entry_file(store, a).exists(), out
    assert all(store.has_blob(d) for d in named)
    [kept] = out["kept_unreadable"]
    assert "not in the form Kiln writes it" in kept["reason"], kept
