"""`kiln show --remote`: an artifact as the remote holds it, verified, without pulling a blob.

Against a real S3-protocol server (moto on 127.0.0.1) and a filesystem remote; the remote is
read back and tampered with by the tests' own raw view, not through Kiln.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ..conftest import run_kiln
from ..remote.conftest import RemoteView, aws_env, blob_key, file_view, moto_server, remote, s3_view  # noqa: F401
from ._helpers import artifact_dir, put

pytestmark = pytest.mark.light


def _pushed(tmp_path: Path, model: Path, view: RemoteView) -> str:
    key = put(model, artifact_dir(tmp_path / "a", b"engine", shared=b"w" * 3000))
    r = run_kiln("push", "--key", key[:12], "--remote", view.url)
    assert r.returncode == 0, r.stderr
    return key


def test_show_remote_reads_the_artifact_without_pulling_it(tmp_path: Path, fake_model: Path, remote: RemoteView) -> None:  # noqa: F811
    key = _pushed(tmp_path, fake_model, remote)
    fresh = tmp_path / "fresh-home"
    env = {"KILN_HOME": str(fresh)}
    r = run_kiln("show", key[:12], "--remote", remote.url, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"key        {key}" in r.stdout and "engine.pt2" in r.stdout and "weights.safetensors" in r.stdout
    assert "torch-aoti" in r.stdout
    # `--remote` alone uses the configured remote; the ref may come right after it.
    for args in (["show", "--remote", key[:12]], ["show", key[:12], "--remote"]):
        again = run_kiln(*args, env={**env, "KILN_REMOTE": remote.url})
        assert again.returncode == 0 and key in again.stdout, again.stdout + again.stderr
    data = json.loads(run_kiln("show", key, "--remote", remote.url, "--json", env=env).stdout)
    assert data["source"] == "remote" and data["entry"]["key"] == key and data["record"]["key"] == key
    assert {x["annotations"]["org.opencontainers.image.title"] for x in data["manifest"]["layers"]} == {
        "engine.pt2", "weights.safetensors"}
    blobs = [p for p in (fresh / "blobs").rglob("*") if p.is_file()] if fresh.exists() else []
    assert blobs == []  # nothing was pulled
    assert run_kiln("ls", "-q", env=env).stdout == ""


def test_show_remote_refuses_a_tampered_record(tmp_path: Path, fake_model: Path, remote: RemoteView) -> None:  # noqa: F811
    key = _pushed(tmp_path, fake_model, remote)
    home = Path(os.environ["KILN_HOME"])
    manifest = json.loads(run_kiln("show", key, "--json").stdout)["manifest"]
    record_key = blob_key(manifest["config"]["digest"])
    assert record_key in remote.objects()
    remote.write(record_key, remote.read(record_key).replace(b'"kiln_version"', b'"kiln_versioN"'))
    r = run_kiln("show", key[:12], "--remote", remote.url, env={"KILN_HOME": str(home / "other")})
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("kiln: error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert "does not match its digest" in r.stderr


def test_show_remote_of_an_unknown_key(tmp_path: Path, fake_model: Path, remote: RemoteView) -> None:  # noqa: F811
    _pushed(tmp_path, fake_model, remote)
    r = run_kiln("show", "0123456789ab", "--remote", remote.url)
    assert r.returncode == 2 and "no artifact with key or manifest digest starting '0123456789ab' on" in r.stderr
    assert "kiln ls --remote" in r.stderr
