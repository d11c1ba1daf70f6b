"""Remotes for tests: a real S3-protocol server (moto, a separate process on loopback) and a
filesystem remote in tmp_path, plus a raw view of either that bypasses Kiln entirely.

Nothing is mocked: Kiln talks HTTP to a real server (or writes real files), and the checks
read the bucket back with boto3 (or the directory with os.walk), not with Kiln's own code.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import run_kiln, write_fake_model

# Pinned toolchain: keys do not depend on what happens to be installed here.
TOOLCHAIN = {"torch": "2.0.0", "transformers": "5.0.0", "hardware": "cpu-test"}
PINS = [f"--toolchain={k}={v}" for k, v in TOOLCHAIN.items()]
SPEC = ["--target", "torch-aoti", "--n-positions", "256", *PINS]


def spec_args(batch_size: int = 1) -> list[str]:
    return [*SPEC, "--batch-size", str(batch_size)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- OCI registry


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real registry (Debian's docker-registry) on loopback, for the session; tests use their own repository."""
    from tests.remote.oci_registry import REGISTRY, start_registry

    if REGISTRY is None:
        pytest.skip("no docker-registry here (Debian: apt-get install docker-registry; scripts/setup_debian.sh does it)")
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture
def oci_url(oci_registry: Any) -> str:
    """A fresh repository in the session's registry."""
    return oci_registry.url(f"kiln/t{uuid.uuid4().hex[:12]}")


# --------------------------------------------------------------------------- moto server


@dataclass
class MotoServer:
    proc: subprocess.Popen
    port: int
    log_path: Path
    _log: Any

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL works on a SIGSTOPped process too
        self.proc.wait(timeout=30)
        self._log.close()


def start_moto(log_path: Path, timeout: float = 30.0) -> MotoServer:
    """`python -m moto.server` on a free loopback port, once it answers HTTP."""
    port = free_port()
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    server = MotoServer(proc, port, log_path, log)
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log.close()
            raise RuntimeError(f"moto server exited with {proc.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{server.endpoint}/moto-api/", timeout=2) as r:
                r.read()
            return server
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"moto server on port {port} did not answer within {timeout} s") from None
            time.sleep(0.1)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


def aws_env(monkeypatch: pytest.MonkeyPatch, secret: str = "kiln-test-secret") -> None:
    """Test credentials only; nothing from the developer's AWS config leaks in."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "kiln-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION",
                 "KILN_S3_ADDRESSING", "KILN_S3_TIMEOUT", "KILN_S3_DEADLINE"):
        monkeypatch.delenv(name, raising=False)


def s3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="kiln-test-key", aws_secret_access_key="kiln-test-secret",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"}),
    )


def new_bucket(client: Any) -> str:
    name = f"kiln-{uuid.uuid4().hex[:16]}"  # unique per test, well over 3 characters
    client.create_bucket(Bucket=name)
    return name


# --------------------------------------------------------------------------- raw views


class RemoteView:
    """Reads and writes a remote's objects without Kiln: the test's independent eyes."""

    kind: str
    url: str

    def objects(self) -> dict[str, int]:  # key (relative to the remote root) -> size
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        raise NotImplementedError

    def write(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def delete(self, key: str) -> None:
        raise NotImplementedError

    def clear(self) -> None:
        objs = self.objects()
        for k in sorted(objs, key=lambda k: not k.startswith("index/")):  # index entries first
            self.delete(k)


class S3View(RemoteView):
    kind = "s3"

    def __init__(self, client: Any, bucket: str, prefix: str, endpoint: str) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self.url = f"s3://{bucket}/{prefix}?endpoint={endpoint}"

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    def objects(self) -> dict[str, int]:
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + "/"):
            for o in page.get("Contents", []):
                out[o["Key"][len(self.prefix) + 1:]] = int(o["Size"])
        return out

    def all_bucket_objects(self) -> dict[str, bytes]:
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            for o in page.get("Contents", []):
                out[o["Key"]] = self.client.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read()
        return out

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._k(key), Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._k(key))

    def etag(self, key: str) -> str:
        return str(self.client.head_object(Bucket=self.bucket, Key=self._k(key))["ETag"]).strip('"')


class FileView(RemoteView):
    kind = "file"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = str(root)

    def objects(self) -> dict[str, int]:
        out = {}
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith("."):
                    continue  # a writer's temp file: never a visible object
                p = Path(dirpath) / name
                out[p.relative_to(self.root).as_posix()] = p.stat().st_size
        return out

    def temp_files(self) -> list[Path]:
        return [Path(d) / n for d, _, files in os.walk(self.root) for n in files if n.startswith(".")]

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        p = self.root / key
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists():
            p.chmod(0o644)
        p.write_bytes(data)

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)


@pytest.fixture
def s3_view(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> S3View:
    aws_env(monkeypatch)
    client = s3_client(moto_server.endpoint)
    return S3View(client, new_bucket(client), "kiln/prefix", moto_server.endpoint)


@pytest.fixture
def file_view(tmp_path: Path) -> FileView:
    root = tmp_path / "shared-remote"
    root.mkdir()
    return FileView(root)


@pytest.fixture(params=["s3", "file"])
def remote(request: pytest.FixtureRequest) -> RemoteView:
    """The same test against a real S3-protocol server and against a shared directory."""
    return request.getfixturevalue("s3_view" if request.param == "s3" else "file_view")


# --------------------------------------------------------------------------- checking a remote


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_key(digest: str) -> str:
    return f"blobs/sha256/{digest.split(':', 1)[1]}"


def check_remote(view: RemoteView, *, deep: bool = False) -> dict[str, dict]:
    """Assert that every index entry on the remote names a complete artifact.

    Entry where its content says; manifest present and digest-correct; build record present
    and digest-correct; every file blob present with the manifest's size (``deep``: and the
    right sha256). Returns {entry key: manifest JSON}.
    """
    objs = view.objects()
    found: dict[str, dict] = {}
    for k in sorted(objs):
        if not k.startswith("index/"):
            continue
        assert k.endswith(".json"), f"unexpected object {k} under index/"
        _, model_hex, name = k.split("/")
        entry = json.loads(view.read(k))
        assert name == entry["key"] + ".json", f"{k} holds the entry of {entry['key']}"
        assert entry["model"]["tree_digest"] == "sha256:" + model_hex, f"{k}: model digest mismatch"
        mkey = blob_key(entry["manifest"])
        assert mkey in objs, f"{k}: manifest {mkey} is missing"
        mbytes = view.read(mkey)
        assert _sha(mbytes) == entry["manifest"], f"{k}: manifest {mkey} does not match its digest"
        manifest = json.loads(mbytes)
        ckey = blob_key(manifest["config"]["digest"])
        assert objs.get(ckey) == manifest["config"]["size"], f"{k}: build record {ckey} missing or wrong size"
        assert _sha(view.read(ckey)) == manifest["config"]["digest"], f"{k}: build record {ckey} is corrupt"
        for layer in manifest["layers"]:
            bkey = blob_key(layer["digest"])
            path = layer["annotations"]["org.opencontainers.image.title"]
            assert bkey in objs, f"{k}: blob of {path} ({bkey}) is missing"
            assert objs[bkey] == layer["size"], f"{k}: blob of {path} has {objs[bkey]} bytes, manifest says {layer['size']}"
            if deep:
                assert _sha(view.read(bkey)) == layer["digest"], f"{k}: blob of {path} is corrupt"
        assert len(manifest["layers"]) == entry["files"]
        assert sum(layer["size"] for layer in manifest["layers"]) == entry["size"]
        found[entry["key"]] = manifest
    return found


# --------------------------------------------------------------------------- artifacts


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def store_put(src: Path, model: Path, batch_size: int = 1, env: dict | None = None) -> str:
    """`kiln store put` (the local publish a build does); returns the build key."""
    r = run_kiln("store", "put", str(src), str(model), *spec_args(batch_size), "--json", env=env)
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["key"])


def kiln_remote(url: str, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return run_kiln("--remote", url, *args, env=env, timeout=timeout)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_fake_model(tmp_path / "model")
