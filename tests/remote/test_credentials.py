"""Credentials are never printed nor written: not on stdout/stderr (human or --json output,
successes and failures), not in any file of the local store or the materialised artifact,
not in any object of the bucket."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.conftest import run_kiln
from tests.remote.conftest import S3View, free_port, kiln_remote, spec_args, store_put, write_tree


def test_credentials_never_appear_in_output_files_or_bucket(
    s3_view: S3View, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"kilnSecretSentinel{uuid.uuid4().hex}"
    token = f"kilnTokenSentinel{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    key = store_put(write_tree(tmp_path / "art", {"engine.bin": os.urandom(200_000), "config.json": b"{}"}), model)
    url = s3_view.url
    homes = [Path(os.environ["KILN_HOME"])] + [tmp_path / f"home{i}" for i in range(5)]
    env = [{"KILN_HOME": str(h)} for h in homes]
    runs = [
        kiln_remote(url, "push", "--key", key),
        kiln_remote(url, "push", "--key", key, "--json"),
        kiln_remote(url, "ls", "--remote"),
        kiln_remote(url, "ls", "--remote", "--json"),
        kiln_remote(url, "pull", "--key", key, env=env[1]),
        kiln_remote(url, "pull", "--all", "--json", env=env[2]),
        kiln_remote(url, "ensure", str(model), *spec_args(), "--dest", str(tmp_path / "d3"), env=env[3]),
        kiln_remote(url, "ensure", str(model), *spec_args(), "--dest", str(tmp_path / "d4"), "--json", env=env[4]),
        kiln_remote(url, "gc", "--remote", "--dry-run"),
    ]
    assert [r.returncode for r in runs] == [0] * len(runs), [r.stderr for r in runs]
    failing = [
        kiln_remote(url.replace(s3_view.bucket, "no-such-bucket-kiln"), "push", "--key", key),
        kiln_remote(f"s3://b/p?endpoint=http://127.0.0.1:{free_port()}", "ensure", str(model), *spec_args(),
                    "--dest", str(tmp_path / "d5"), "--json", env=env[5]),
    ]
    assert [r.returncode for r in failing] == [2] * len(failing), [r.stderr for r in failing]
    assert "no-such-bucket-kiln does not exist" in failing[0].stderr

    for r in runs + failing:
        for text in (r.stdout, r.stderr):
            assert secret not in text and token not in text, f"{r.args}: credential printed"
    files = [p for root in [*homes, tmp_path / "d3", tmp_path / "d4"] for p in root.rglob("*") if p.is_file()]
    assert len(files) > 20
    for p in files:
        data = p.read_bytes()
        assert secret.encode() not in data and token.encode() not in data, f"credential written to {p}"
    objects = s3_view.all_bucket_objects()
    assert len(objects) >= 5
    for k, data in objects.items():
        assert secret.encode() not in data and token.encode() not in data, f"credential in object {k}"
    # The sentinel really was in the environment Kiln ran with (so the checks above mean something).
    assert run_kiln("--version").returncode == 0 and os.environ["AWS_SECRET_ACCESS_KEY"] == secret
