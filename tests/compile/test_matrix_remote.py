"""`kiln matrix build` against a remote: hits are confirmed from its index, "pushed" is the truth.

Before: every row the remote already had was pulled (every blob downloaded and verified, N ×
the engine size per CI job) just to learn that it was a hit, and ``pushed`` was true for every
row of a ``--push`` run, whether anything was sent or not. Real files, a real filesystem
remote, the real CLI in subprocesses.
"""

from __future__ import annotations

import json
from pathlib import Path

from ._matrix_schema import check_matrix_json
from ..conftest import run_kiln, write_fake_model

SHAPES = ("256", "512")


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def _setup(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A model, two stored artifacts of it (put, no compile) in store A, and a matrix of the two."""
    model = write_fake_model(tmp_path / "m", weight_bytes=1 << 16)
    env = {"KILN_HOME": str(tmp_path / "store-a")}
    for n in SHAPES:
        art = tmp_path / f"art{n}"
        art.mkdir()
        (art / "engine.pt2").write_bytes(n.encode() * 4096)
        put = run_kiln("store", "put", str(art), str(model), "--target", "torch-aoti", "--n-positions", n,
                       "--dtype", "fp32", env=env)
        assert put.returncode == 0, put.stderr
    mfile = tmp_path / "m.yaml"
    mfile.write_text(f"models: [{model}]\ntargets: [torch-aoti]\nn_positions: [{', '.join(SHAPES)}]\ndtypes: [fp32]\n")
    return model, mfile, env


def _build(mfile: Path, remote: Path, env: dict[str, str], *args: str) -> dict:
    r = run_kiln("--remote", str(remote), "matrix", "build", str(mfile), "--json", *args, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return check_matrix_json("build", json.loads(r.stdout))


def test_remote_hits_are_confirmed_from_the_index_without_downloading(tmp_path: Path) -> None:
    model, mfile, env_a = _setup(tmp_path)
    remote = tmp_path / "remote"
    first = _build(mfile, remote, env_a, "--push")
    assert [(r["status"], r["source"], r["pushed"]) for r in first["rows"]] == [("hit", "local", True)] * 2
    assert all(r["push"]["entry_existed"] is False and r["push"]["uploaded_blobs"] > 0 for r in first["rows"])

    # A CI job in a fresh store: both rows are on the remote. Nothing may be downloaded.
    env_b = {"KILN_HOME": str(tmp_path / "store-b")}
    plan = run_kiln("--remote", str(remote), "matrix", "plan", str(mfile), "--json", env=env_b)
    assert [r["source"] for r in json.loads(plan.stdout)["rows"]] == ["remote", "remote"]
    data = _build(mfile, remote, env_b, "--push")
    assert [(r["status"], r["source"], r["pushed"]) for r in data["rows"]] == [("hit", "remote", False)] * 2
    assert [r["key"] for r in data["rows"]] == [r["key"] for r in first["rows"]]
    assert all(r["size"] > 0 for r in data["rows"])
    store_b = tmp_path / "store-b"
    assert not _files(store_b / "blobs") and not _files(store_b / "index"), "matrix build downloaded remote hits"


def test_pushed_is_true_only_for_what_this_run_put_on_the_remote(tmp_path: Path) -> None:
    model, mfile, env_a = _setup(tmp_path)
    remote = tmp_path / "remote"
    # One row pushed by hand first; the matrix push then sends only the other one.
    r = run_kiln("--remote", str(remote), "push", str(model), "--target", "torch-aoti", "--n-positions", SHAPES[0],
                 "--dtype", "fp32", env=env_a)
    assert r.returncode == 0, r.stderr
    data = _build(mfile, remote, env_a, "--push")
    assert [row["pushed"] for row in data["rows"]] == [False, True]
    assert data["rows"][0]["push"]["entry_existed"] is True and data["rows"][0]["push"]["uploaded_blobs"] == 0
    # Everything is there now: a second push run pushes nothing.
    again = _build(mfile, remote, env_a, "--push")
    assert [row["pushed"] for row in again["rows"]] == [False, False]
    # A blob the remote lost (e.g. a bad gc) is restored by the push, and that is reported as pushed.
    engine_blob = max(_files(remote / "blobs"), key=lambda p: p.stat().st_size)
    engine_blob.chmod(0o644)
    engine_blob.unlink()
    healed = _build(mfile, remote, env_a, "--push")
    assert sorted(row["pushed"] for row in healed["rows"]) == [False, True]
    text = run_kiln("--remote", str(remote), "matrix", "build", str(mfile), "--push", env=env_a)
    assert text.returncode == 0 and "no (on the remote)" in text.stdout and "pushed" not in text.stdout.splitlines()[-1]


def test_a_failed_push_keeps_the_row_and_fails_the_run(tmp_path: Path) -> None:
    _, mfile, env_a = _setup(tmp_path)
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "blobs").write_text("a file where the remote's blob directory belongs")  # every upload fails
    r = run_kiln("--remote", str(remote), "matrix", "build", str(mfile), "--push", "--json", env=env_a)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    rows = check_matrix_json("build", json.loads(r.stdout))["rows"]
    assert all(row["status"] == "hit" and row["key"] and not row["pushed"] for row in rows)
    assert all(row["push_error"].startswith(f"push to {remote}") for row in rows), rows
