"""Credentials are never printed nor written: not on stdout/stderr (human or --json output,
successes and failures), not in any file of the local store or the materialised artifact,
not in any object of the bucket."""

from __future__ import annotations

import json
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


def test_url_credentials_never_appear_in_output_records_files_or_bucket(
    s3_view: S3View, tmp_path: Path
) -> None:
    """Credentials written into the remote URL itself — userinfo in the endpoint
    (``?endpoint=http://KEY:SECRET@host``, which botocore and moto accept) and a secret-named
    query parameter (``&secret=…``, which the S3 remote ignores) — are redacted everywhere: in
    human and --json output, in errors, in every file of the stores and DESTs, and in every
    object of the bucket, including the build record of a `kiln build --remote URL --push`
    (whose provenance keeps the command line).

    Before: the build record stored the whole command line, URL credentials included, and
    pushed it to the bucket; `kiln show` printed it."""
    from tests.tiny_models import make_tiny_model

    ak, sk, q = (f"{name}Sentinel{uuid.uuid4().hex}" for name in ("kilnKey", "kilnSecret", "kilnQuery"))
    sentinels = (ak, sk, q)
    endpoint = s3_view.url.split("?endpoint=", 1)[1]
    url = s3_view.url.replace(f"?endpoint={endpoint}", f"?endpoint={endpoint.replace('://', f'://{ak}:{sk}@')}&secret={q}")
    assert ak in url and sk in url and q in url
    model = make_tiny_model("llama", tmp_path / "m", seed=21)
    spec = ["--target", "torch-aoti", "--n-positions", "32"]
    homes = [tmp_path / f"home{i}" for i in range(6)]
    env = [{"KILN_HOME": str(h)} for h in homes]
    built = kiln_remote(url, "build", str(model), *spec, "--push", "--json", env=env[0], timeout=900)
    assert built.returncode == 0, built.stderr
    key = json.loads(built.stdout)["key"]
    runs = [
        built,
        kiln_remote(url, "push", "--key", key, env=env[0]),
        kiln_remote(url, "ls", "--remote", env=env[0]),
        kiln_remote(url, "ls", "--remote", "--json", env=env[0]),
        kiln_remote(url, "show", key[:12], "--remote", env=env[1]),
        kiln_remote(url, "show", key[:12], "--remote", "--json", env=env[1]),
        kiln_remote(url, "pull", "--key", key, "--json", env=env[1]),
        kiln_remote(url, "show", key[:12], env=env[1]),
        kiln_remote(url, "ensure", str(model), *spec, "--dest", str(tmp_path / "d2"), env=env[2]),
        kiln_remote(url, "ensure", str(model), *spec, "--dest", str(tmp_path / "d3"), "--json", env=env[3]),
        run_kiln("lookup", str(model), *spec, "--json", env={**env[4], "KILN_REMOTE": url}),
        kiln_remote(url, "gc", "--remote", "--dry-run", env=env[0]),
        kiln_remote(url, "gc", "--remote", "--dry-run", "--json", env=env[0]),
    ]
    assert [r.returncode for r in runs] == [0] * len(runs), [(r.args[3:6], r.stderr) for r in runs]
    record = json.loads(runs[5].stdout)["record"]
    assert "--push" in record["provenance"]["command"], record["provenance"]  # the command line is kept, redacted
    dead = url.replace(f":{endpoint.rsplit(':', 1)[1]}", f":{free_port()}")
    failing = [
        kiln_remote(dead, "ls", "--remote", env=env[5]),
        kiln_remote(dead, "ensure", str(model), *spec, "--dest", str(tmp_path / "d5"), "--json", env=env[5]),
        kiln_remote(url.replace(s3_view.bucket, "no-such-bucket-kiln"), "push", "--key", key, env=env[0]),
        kiln_remote(f"file://{ak}:{sk}@somehost/x?secret={q}", "ls", "--remote", env=env[5]),
    ]
    assert [r.returncode for r in failing] == [2] * len(failing), [r.stderr for r in failing]
    assert all(r.stderr.startswith("kiln: error: ") for r in failing), [r.stderr for r in failing]

    for r in runs + failing:
        for text in (r.stdout, r.stderr):
            assert not any(s in text for s in sentinels), f"{r.args}: credential printed: {text[-2000:]}"
    files = [p for root in [*homes, tmp_path / "d2", tmp_path / "d3"] for p in root.rglob("*") if p.is_file()]
    assert any("blobs" in p.parts for p in files) and len(files) > 20
    for p in files:
        data = p.read_bytes()
        assert not any(s.encode() in data for s in sentinels), f"credential written to {p}"
    objects = s3_view.all_bucket_objects()
    assert len(objects) >= 5
    for k, data in objects.items():
        assert not any(s.encode() in data for s in sentinels), f"credential in bucket object {k}"
