"""s3:// model URIs (issue 13 item 3), against the moto server on 127.0.0.1.

A model uploaded to a bucket keys as the same files in a local directory do; `kiln store put`
from the URI downloads it into the store's model cache and records it (every file's sha256, by
its ETag and size); a fresh machine with only the remote looks the URI up from that record,
downloading nothing; an object changed in the bucket (a new ETag) is a miss, never the old
artifact; a record whose commit is not the digest of its ETags is refused; no credentials is one
clear line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kiln import BuildSpec, resolve
from kiln.cache import Store, open_remote
from kiln.errors import UnsafeManifestError
from kiln.manifests._model_record import ModelRecord, s3_listing_digest
from kiln.models import fetch_model_files
from kiln.models._s3model import list_s3_model
from tests.conftest import LLAMA_CONFIG, run_kiln, write_fake_model
from tests.models.test_hub_metadata import TENSORS, expected_signature, safetensors_file
from tests.remote.conftest import MotoServer, aws_env, moto_server, new_bucket, s3_client  # noqa: F401  (fixtures)

PINS = ["--toolchain", "torch=2.0.0", "--toolchain", "transformers=5.0.0", "--toolchain", "hardware=cpu-test"]
AOTI = ["--target", "torch-aoti", "--n-positions", "64", "--dtype", "fp32", *PINS]
TOOLCHAIN = {"torch": "2.0.0", "transformers": "5.0.0", "hardware": "cpu-test"}


def _upload(client: Any, bucket: str, prefix: str, model: Path) -> None:
    for f in sorted(model.rglob("*")):
        if f.is_file():
            client.put_object(Bucket=bucket, Key=prefix + f.relative_to(model).as_posix(), Body=f.read_bytes())


@pytest.fixture
def s3_model(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Any, str, Path]:  # noqa: F811
    """(client, model URI, the same files as a local directory)."""
    aws_env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.endpoint)
    client = s3_client(moto_server.endpoint)
    bucket = new_bucket(client)
    model = write_fake_model(tmp_path / "local-model")
    _upload(client, bucket, "models/tiny/", model)
    return client, f"s3://{bucket}/models/tiny/", model


def _key(*args: str, env: dict | None = None) -> str:
    r = run_kiln("key", *args, *AOTI, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip()


def test_an_s3_model_keys_as_the_same_files_in_a_directory(s3_model: tuple[Any, str, Path]) -> None:
    _client, uri, local = s3_model
    assert _key(uri) == _key(str(local))
    store = Store(Path(os.environ["KILN_HOME"]))
    cached = [p for p in store.s3_models_dir.rglob("*") if p.is_file() and p.suffix != ".lock"]
    # The model's files only (README.md never changes an engine, so it is not downloaded).
    assert sorted(p.name for p in cached) == ["config.json", "model.safetensors", "tokenizer.json"]


def _put_and_push(uri: str, tmp_path: Path) -> tuple[str, str]:
    art = tmp_path / "artifact"
    art.mkdir()
    (art / "engine.pt2").write_bytes(b"engine bytes")
    r = run_kiln("store", "put", str(art), uri, *AOTI, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    key = str(json.loads(r.stdout)["key"])
    remote = str(tmp_path / "remote")
    p = run_kiln("--remote", remote, "push", "--key", key)
    assert p.returncode == 0, p.stdout + p.stderr
    return key, remote


def test_a_fresh_machine_looks_up_an_s3_model_by_uri_and_a_changed_object_misses(
        s3_model: tuple[Any, str, Path], tmp_path: Path) -> None:
    client, uri, _local = s3_model
    key, remote = _put_and_push(uri, tmp_path)
    fresh = tmp_path / "fresh-kiln"
    env = {"KILN_HOME": str(fresh)}
    hit = run_kiln("--remote", remote, "lookup", uri, *AOTI, "--json", env=env)
    assert hit.returncode == 0, hit.stdout + hit.stderr
    assert json.loads(hit.stdout)["entry"]["key"] == key
    assert not (fresh / "s3-models").exists()  # identified by the record: nothing downloaded
    # One object's bytes change (a new ETag): its old record does not match, the lookup misses.
    bucket, prefix = uri[5:].split("/", 1)
    client.put_object(Bucket=bucket, Key=prefix + "model.safetensors", Body=b"other weights" * 300)
    for home in (fresh, tmp_path / "fresh-2"):
        miss = run_kiln("--remote", remote, "lookup", uri, *AOTI, "--json", env={"KILN_HOME": str(home)})
        assert miss.returncode == 1, miss.stdout + miss.stderr
        assert "Traceback" not in miss.stderr


def test_a_build_from_a_record_downloads_the_recorded_bytes(s3_model: tuple[Any, str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _client, uri, local = s3_model
    key, remote = _put_and_push(uri, tmp_path)
    fresh = Store(tmp_path / "fresh-kiln")
    monkeypatch.setenv("KILN_HOME", str(fresh.root))
    res = resolve(BuildSpec("torch-aoti", uri, n_positions=64, dtype="fp32"), store=fresh,
                  remote=open_remote(remote), toolchain=TOOLCHAIN)
    assert res.key == key and not res.model.files_local
    assert res.model.config()["model_type"] == "llama"  # from the record: nothing downloaded yet
    # An interrupted download left a truncated file: it is fetched again, the rest kept.
    assert res.model.path is not None
    partial = res.model.path.with_name(res.model.path.name + ".partial")
    partial.mkdir(parents=True)
    (partial / "model.safetensors").write_bytes(b"trunc")
    fetch_model_files(res.model, fresh.memo)  # what a build does first
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (res.model.path / name).read_bytes() == (local / name).read_bytes()


def _s3_record(commit: str, etags: list[tuple[str, str]], repo_id: str = "s3/" + "c" * 64) -> ModelRecord:
    return ModelRecord.make(ref="s3://b/m/", repo_id=repo_id, revision="s3", commit=commit,
                            files=[("model.safetensors", "b" * 64, 10), ("tokenizer.json", "a" * 64, 2)],
                            resolved_at="2025-01-02T03:04:05.000006Z", config=None, etags=etags)


def test_an_s3_record_must_match_its_etags() -> None:
    etags = [("model.safetensors", "e2"), ("tokenizer.json", "e1")]
    commit = s3_listing_digest([("model.safetensors", "e2", 10), ("tokenizer.json", "e1", 2)])
    record = _s3_record(commit, etags)
    assert ModelRecord.parse(record.to_bytes()).etags == tuple(etags)
    # A record whose commit is not its ETags' digest would match a listing of other objects: refused.
    with pytest.raises(UnsafeManifestError, match="commit is not the digest"):
        _s3_record("d" * 64, etags)
    with pytest.raises(UnsafeManifestError, match="commit is not the digest"):
        _s3_record(commit, [("model.safetensors", "e3"), ("tokenizer.json", "e1")])
    with pytest.raises(UnsafeManifestError, match="every file's ETag"):
        _s3_record(commit, etags[:1])
    with pytest.raises(UnsafeManifestError, match="only an S3 model's record"):
        _s3_record("a" * 40, etags, repo_id="acme/tiny")


def test_an_s3_model_without_credentials_is_one_clear_line(s3_model: tuple[Any, str, Path]) -> None:
    _client, uri, _local = s3_model
    r = _run_without(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), "key", uri, *AOTI)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no AWS credentials" in r.stderr and "AWS_PROFILE" in r.stderr and "Traceback" not in r.stderr


def _run_without(names: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    """`kiln ARGS` with ``names`` removed from the environment (run_kiln can only add)."""
    env = {k: v for k, v in os.environ.items() if k not in names}
    return subprocess.run([sys.executable, "-m", "kiln.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_a_real_build_from_an_s3_model_is_found_by_uri_on_a_fresh_machine(
        moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # noqa: F811
    """A real torch-aoti build from the URI; pushed; a fresh KILN_HOME finds it by the URI alone."""
    from tests.tiny_models import make_tiny_model

    aws_env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.endpoint)
    client = s3_client(moto_server.endpoint)
    bucket = new_bucket(client)
    _upload(client, bucket, "tiny/", make_tiny_model("llama", tmp_path / "m", seed=7))
    uri, remote, spec = f"s3://{bucket}/tiny/", str(tmp_path / "remote"), ["--target", "torch-aoti", "--n-positions", "32"]
    b = run_kiln("--remote", remote, "build", uri, *spec, "--push", "--json", timeout=600)
    assert b.returncode == 0, b.stdout + b.stderr
    key = json.loads(b.stdout)["key"]
    hit = run_kiln("--remote", remote, "lookup", uri, *spec, "--json", env={"KILN_HOME": str(tmp_path / "fresh")})
    assert hit.returncode == 0, hit.stdout + hit.stderr
    assert json.loads(hit.stdout)["entry"]["key"] == key
    assert not (tmp_path / "fresh" / "s3-models").exists()


def test_a_missing_bucket_or_an_empty_prefix_is_one_clear_line(s3_model: tuple[Any, str, Path]) -> None:
    _client, uri, _local = s3_model
    bucket = uri[5:].split("/", 1)[0]
    for bad, says in ((f"s3://{bucket}-absent/models/tiny/", "the bucket does not exist"),
                      (f"s3://{bucket}/models/other/", "holds no model files")):
        r = run_kiln("key", bad, *AOTI)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stdout + r.stderr


def test_s3_sha256_checksums_identify_a_model_without_downloading_it(
        moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # noqa: F811
    """Objects uploaded with full-object SHA-256 checksums: key and lookup read config.json only."""
    aws_env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.endpoint)
    client = s3_client(moto_server.endpoint)
    bucket = new_bucket(client)
    model = write_fake_model(tmp_path / "local-model", seed=3)
    for f in sorted(model.iterdir()):
        client.put_object(Bucket=bucket, Key="m/" + f.name, Body=f.read_bytes(), ChecksumAlgorithm="SHA256")
    uri = f"s3://{bucket}/m/"
    assert _key(uri) == _key(str(model))
    store = Store(Path(os.environ["KILN_HOME"]))
    assert not [p for p in store.s3_models_dir.rglob("*") if p.is_file() and p.suffix != ".lock"]
    # An object of the same key without a checksum: no longer identified by checksums; downloaded and hashed.
    client.put_object(Bucket=bucket, Key="m/tokenizer.json", Body=b'{"version": "2.0"}')
    (model / "tokenizer.json").write_bytes(b'{"version": "2.0"}')
    assert _key(uri) == _key(str(model))
    assert (next(store.s3_models_dir.rglob("model.safetensors"))).read_bytes() == (model / "model.safetensors").read_bytes()


def _explain(ref: str) -> dict:
    r = run_kiln("key", ref, *AOTI, "--explain", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    return dict(json.loads(r.stdout))


def test_an_s3_model_identified_by_checksums_keys_by_its_architecture_as_a_directory_does(
        moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:  # noqa: F811
    """Identified by S3's checksums, the weights are never downloaded: their safetensors headers are
    read by ranged GETs, or the torch-aoti engine would be keyed by the tree digest, not the
    architecture digest the same files in a directory give (another key: every lookup would miss)."""
    aws_env(monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server.endpoint)
    client = s3_client(moto_server.endpoint)
    bucket = new_bucket(client)
    model = write_fake_model(tmp_path / "local-model", config={**LLAMA_CONFIG, "tie_word_embeddings": False})
    (model / "model.safetensors").write_bytes(safetensors_file(TENSORS))  # real weights: a header to read
    for f in sorted(model.iterdir()):
        client.put_object(Bucket=bucket, Key="m/" + f.name, Body=f.read_bytes(), ChecksumAlgorithm="SHA256")
    uri = f"s3://{bucket}/m/"
    from_s3, from_dir = _explain(uri), _explain(str(model))
    assert "model.architecture_digest" in from_dir["parts"]["engine"]["keyed_by"], from_dir["parts"]
    assert "model.architecture_digest" in from_s3["parts"]["engine"]["keyed_by"], from_s3["parts"]
    assert from_s3["inputs"]["model"] == from_dir["inputs"]["model"]
    assert from_s3["key"] == from_dir["key"]
    assert [n for n in from_s3["notes"] if "S3's SHA-256 checksums" in n], from_s3["notes"]
    store = Store(Path(os.environ["KILN_HOME"]))
    assert not [p for p in store.s3_models_dir.rglob("*") if p.is_file() and p.suffix != ".lock"]  # nothing downloaded
    listing = list_s3_model(uri)
    record = store.model_records.get(listing.repo_id, listing.commit)  # kept: the next lookup reads nothing
    assert record is not None and record.tensors == expected_signature(TENSORS), record
