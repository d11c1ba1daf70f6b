"""A damaged local index entry is not a dead end: verify reports it, gc removes it (with the blobs
no valid entry still references), lookup is a loud miss naming the file, and build rebuilds
over it.

Before (issue 12): lookup and build stopped with "index entry … is damaged", verify passed over
some damage (a FIFO in index/ hung it), gc kept the damaged file and deleted its blobs, and
nothing but removing the file by hand got the key built again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kiln.cache import Store
from tests.cli._helpers import AOTI, artifact_dir, put
from tests.cli.test_json_schemas import check
from tests.conftest import run_kiln

WEIGHTS = b"w" * 5000  # artifact_dir's shared weights file


def _store() -> Store:
    return Store(Path(os.environ["KILN_HOME"]))


def _entry_file(key: str) -> Path:
    [path] = _store().index_dir.glob(f"*/{key}.json")
    return path


def _two(tmp_path: Path, model: Path) -> tuple[str, str]:
    a = put(model, artifact_dir(tmp_path / "a", b"engine A" * 100), *AOTI)
    b = put(model, artifact_dir(tmp_path / "b", b"engine B" * 100), *AOTI, "--batch-size", "2")
    return a, b


def _damage(path: Path, how: str, other: Path | None = None) -> None:
    os.chmod(path, 0o644)
    if how == "garbage":
        path.write_bytes(b"\x00\xffnot an entry")
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif how == "wrong-place":
        assert other is not None
        path.write_bytes(other.read_bytes())
    elif how == "fifo":
        path.unlink()
        os.mkfifo(path)
    else:
        raise AssertionError(how)


DAMAGE = ["garbage", "truncated", "wrong-place", "fifo"]


@pytest.mark.parametrize("how", DAMAGE)
def test_verify_reports_a_damaged_entry(tmp_path: Path, fake_model: Path, how: str) -> None:
    a, b = _two(tmp_path, fake_model)
    path = _entry_file(a)
    _damage(path, how, _entry_file(b))
    r = run_kiln("verify", timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"index entry {path} is damaged" in r.stderr and "Traceback" not in r.stderr, r.stderr
    doc = check("verify", run_kiln("verify", "--json", timeout=60), exit_code=1)
    assert any(str(path) in m for m in doc["missing"]), doc


def test_verify_reports_an_entry_whose_manifest_is_missing(tmp_path: Path, fake_model: Path) -> None:
    a, _ = _two(tmp_path, fake_model)
    store = _store()
    manifest = next(e for e in store.iter_entries() if e.key == a).manifest
    blob = store.blob_path(manifest)
    os.chmod(blob, 0o644)
    blob.unlink()
    r = run_kiln("verify")
    assert r.returncode == 1 and a[:12] in r.stderr and manifest in r.stderr, r.stderr


@pytest.mark.parametrize("how", DAMAGE)
def test_gc_removes_a_damaged_entry_with_its_blobs(tmp_path: Path, fake_model: Path, how: str) -> None:
    store = _store()
    a, b = _two(tmp_path, fake_model)
    a_entry = next(e for e in store.iter_entries() if e.key == a)
    a_manifest = store.read_manifest(a_entry.manifest)
    a_blobs = {a_entry.manifest, a_manifest.config.digest} | {f.digest for f in a_manifest.files}
    path = _entry_file(a)
    _damage(path, how, _entry_file(b))

    doc = check("gc", run_kiln("gc", "--json", timeout=60))
    [bad] = doc["damaged_entries"]
    assert bad["path"] == str(path) and bad["key"] == a, bad
    assert not os.path.lexists(path)
    shared = {d for d in a_blobs if any(d == f.digest for f in store.read_manifest(
        next(e for e in store.iter_entries() if e.key == b).manifest).files)}
    assert len(shared) == 1  # the weights file
    assert {x["digest"] for x in doc["blobs"]} == a_blobs - shared
    assert all(not store.has_blob(d) for d in a_blobs - shared) and all(store.has_blob(d) for d in shared)
    assert run_kiln("verify").returncode == 0
    assert run_kiln("lookup", str(fake_model), *AOTI, "--batch-size", "2").returncode == 0


def test_lookup_of_a_damaged_entry_is_a_loud_miss(tmp_path: Path, fake_model: Path) -> None:
    a, _ = _two(tmp_path, fake_model)
    path = _entry_file(a)
    _damage(path, "garbage")
    r = run_kiln("lookup", str(fake_model), *AOTI)
    assert r.returncode == 1, r.stdout + r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("kiln: WARNING")]
    assert len(warnings) == 1, r.stderr
    assert str(path) in warnings[0] and "kiln gc" in warnings[0] and "kiln build" in warnings[0], warnings
    assert r.stdout.startswith("miss:"), r.stdout
    as_json = run_kiln("lookup", str(fake_model), *AOTI, "--json")
    doc = check("lookup", as_json, exit_code=1)
    assert doc["status"] == "miss" and str(path) in as_json.stderr  # the warning goes to stderr, as for remote data


def test_build_rebuilds_over_a_damaged_entry(tmp_path: Path) -> None:
    """A real torch-aoti build of a tiny model, whose entry is then damaged and built again."""
    from tests.tiny_models import make_tiny_model

    model = make_tiny_model("llama", tmp_path / "m", seed=3)
    spec = ["--target", "torch-aoti", "--n-positions", "32", "--dtype", "fp32"]
    first = run_kiln("build", str(model), *spec, "--json", timeout=900)
    assert first.returncode == 0, first.stderr
    key = json.loads(first.stdout)["key"]
    path = _entry_file(key)
    _damage(path, "truncated")

    again = run_kiln("build", str(model), *spec, "--json", timeout=900)
    assert again.returncode == 0, again.stderr
    doc = json.loads(again.stdout)
    # The artifact is published again; its compiled engine (a stage of its own, intact) is reused.
    assert doc["key"] == key and doc["status"] == "built" and doc["compiled"] is False and doc["engine"]["reused"]
    warnings = [line for line in again.stderr.splitlines() if line.startswith("kiln: WARNING")]
    assert len(warnings) == 1 and str(path) in warnings[0], again.stderr
    assert json.loads(path.read_bytes())["key"] == key  # the publish replaced the damaged file
    hit = run_kiln("lookup", str(model), *spec)
    assert hit.returncode == 0 and hit.stdout.startswith("hit"), hit.stdout + hit.stderr
    assert run_kiln("verify").returncode == 0
