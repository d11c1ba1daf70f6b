"""`kiln rm`: a plan with the bytes it frees, --dry-run, and only blobs nothing else shares go.

Real stores on disk, the real CLI in subprocesses; what stays is checked by `kiln verify` and
by fetching the remaining artifact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ..conftest import run_kiln
from ._helpers import AOTI, artifact_dir, put

pytestmark = pytest.mark.light

SHARED = b"s" * 6000  # the weights file both artifacts hold: one blob in the store


def _two(tmp_path: Path, model: Path) -> tuple[str, str]:
    a = put(model, artifact_dir(tmp_path / "a", b"engine-one", shared=SHARED))
    b = put(model, artifact_dir(tmp_path / "b", b"engine-two", shared=SHARED), *AOTI, "--batch-size", "2")
    return a, b


def _blob_files() -> set[Path]:
    return {p for p in (Path(os.environ["KILN_HOME"]) / "blobs").rglob("*") if p.is_file()}


def test_rm_frees_only_what_no_other_artifact_shares(tmp_path: Path, fake_model: Path) -> None:
    a, b = _two(tmp_path, fake_model)
    before = _blob_files()
    plan = run_kiln("rm", a[:8], "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert f"would remove {a[:12]}" in plan.stdout and "shared with other artifacts stays" in plan.stdout
    assert _blob_files() == before and run_kiln("ls", "-q").stdout.split() != [b]  # nothing removed
    planned = json.loads(run_kiln("rm", a[:8], "--dry-run", "--json").stdout)
    # Freed: the engine file, the build record, the manifest — not the shared weights.
    assert planned["bytes_shared"] == len(SHARED)
    assert len(planned["blobs"]) == 3
    r = run_kiln("rm", a[:8], "--json")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert sorted(x["digest"] for x in done["blobs"]) == sorted(x["digest"] for x in planned["blobs"])
    assert run_kiln("ls", "-q").stdout.split() == [b]
    assert len(before - _blob_files()) == 3
    # The artifact that shared a blob with the removed one is whole.
    assert run_kiln("verify").returncode == 0
    fetched = run_kiln("fetch", str(fake_model), *AOTI, "--batch-size", "2", "--dest", str(tmp_path / "d"))
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert (tmp_path / "d" / "weights.safetensors").read_bytes() == SHARED


def test_rm_by_spec_removes_that_artifact_only(tmp_path: Path, fake_model: Path) -> None:
    a, b = _two(tmp_path, fake_model)
    r = run_kiln("rm", str(fake_model), *AOTI, "--batch-size", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"removed {b[:12]}" in r.stdout
    assert run_kiln("ls", "-q").stdout.split() == [a]
    again = run_kiln("rm", str(fake_model), *AOTI, "--batch-size", "2")
    assert again.returncode == 2 and again.stderr.startswith("kiln: error: no local artifact for")


def test_rm_removes_a_damaged_artifact(tmp_path: Path, fake_model: Path) -> None:
    a, b = _two(tmp_path, fake_model)
    manifest = json.loads(run_kiln("show", a, "--json").stdout)["manifest"]
    layer = next(x for x in manifest["layers"] if x["annotations"]["org.opencontainers.image.title"] == "engine.pt2")
    blob = next((Path(os.environ["KILN_HOME"]) / "blobs").rglob(layer["digest"].split(":", 1)[1]))
    blob.chmod(0o644)
    blob.write_bytes(b"X" * len(b"engine-one"))
    assert run_kiln("verify").returncode == 1
    r = run_kiln("rm", a)
    assert r.returncode == 0, r.stderr
    assert run_kiln("verify").returncode == 0 and run_kiln("ls", "-q").stdout.split() == [b]


def test_rm_with_one_bad_ref_removes_nothing(tmp_path: Path, fake_model: Path) -> None:
    a, b = _two(tmp_path, fake_model)
    before = _blob_files()
    r = run_kiln("rm", a, "0123456789ab")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("kiln: error: no artifact with key") and "Traceback" not in r.stderr
    assert _blob_files() == before and sorted(run_kiln("ls", "-q").stdout.split()) == sorted([a, b])


@pytest.mark.parametrize("args, message", [
    ([], "name what to remove"),
    (["abc"], "'abc' is not a key"),
    (["--target", "torch-aoti"], "spec flags need a MODEL"),
])
def test_rm_bad_input_is_one_line(tmp_path: Path, fake_model: Path, args: list[str], message: str) -> None:
    _two(tmp_path, fake_model)
    r = run_kiln("rm", *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_rm_needs_six_digits_of_a_key(tmp_path: Path, fake_model: Path) -> None:
    a, _ = _two(tmp_path, fake_model)
    r = run_kiln("rm", a[:5])
    assert r.returncode == 2 and "is not a key" in r.stderr
    assert run_kiln("rm", a[:6], "--dry-run").returncode == 0
