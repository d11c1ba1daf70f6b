"""Remote faults: dead, refused and hung servers; objects changed behind Kiln's back; hostile
manifests and index entries.

Each fault must end in a clear message and an exit code (2 for errors, 1 for a miss with a
loud warning), never a traceback, never an endless wait, never a partial artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from kiln.cache.remotes import S3Remote, open_remote
from kiln.errors import RemoteError
from tests.conftest import run_kiln
from tests.remote.conftest import (
    RemoteView,
    blob_key,
    free_port,
    kiln_remote,
    new_bucket,
    s3_client,
    spec_args,
    start_moto,
    store_put,
    write_tree,
)


def _files(seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {"engine/model.pt2": rng.randbytes(600_000), "weights.bin": rng.randbytes(300_000), "config.json": b"{}"}


def _assert_clean_error(r, endpoint: str, elapsed: float, bound: float = 60) -> None:  # type: ignore[no-untyped-def]
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    assert r.stderr.startswith("kiln: error: "), r.stderr
    assert endpoint in r.stderr, r.stderr
    assert elapsed < bound, f"took {elapsed:.1f} s"


def _commands(fault: str, model: Path, key: str, dest: Path) -> list[list[str]]:
    """Every remote command, split between the two faults (each command costs a process)."""
    if fault == "stopped":
        return [["push", "--key", key], ["ensure", str(model), *spec_args(), "--dest", str(dest)], ["ls", "--remote"],
                ["gc", "--remote", "--grace", "0s"]]
    return [["push", "--key", key, "--json"], ["ensure", str(model), *spec_args(), "--dest", str(dest), "--json"],
            ["lookup", str(model), *spec_args(), "--json"], ["pull", "--all", "--json"], ["ls", "--remote", "--json"]]


@pytest.mark.parametrize("fault", ["stopped", "refused"])
def test_unreachable_server_is_a_clear_bounded_error(
    fault: str, s3_view: RemoteView, model: Path, tmp_path: Path
) -> None:
    key = store_put(write_tree(tmp_path / "art", _files()), model)
    if fault == "stopped":
        # A server that worked (the artifact went up), then went away.
        server = start_moto(tmp_path / "moto2.log")
        client = s3_client(server.endpoint)
        bucket = new_bucket(client)
        url = f"s3://{bucket}/p?endpoint={server.endpoint}"
        assert kiln_remote(url, "push", "--key", key).returncode == 0
        client.close()
        server.stop()
        endpoint = server.endpoint
    else:
        endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        url = f"s3://somebucket/p?endpoint={endpoint}"
    for args in _commands(fault, model, key, tmp_path / "dest"):
        env = {"KILN_HOME": str(tmp_path / "empty")} if args[0] in ("ensure", "lookup", "pull") else None
        t0 = time.monotonic()
        r = kiln_remote(url, *args, env=env)
        _assert_clean_error(r, endpoint, time.monotonic() - t0)
        assert "cannot reach" in r.stderr, r.stderr
    assert not (tmp_path / "dest").exists()
    assert json.loads(run_kiln("ls", "--json", env={"KILN_HOME": str(tmp_path / "empty")}).stdout) == []


def test_hung_server_times_out_within_the_bound(s3_view: RemoteView, model: Path, tmp_path: Path) -> None:
    """A server that accepts connections and never answers (SIGSTOPped): bounded retries."""
    key = store_put(write_tree(tmp_path / "art", _files()), model)
    server = start_moto(tmp_path / "moto-hung.log")
    try:
        client = s3_client(server.endpoint)
        bucket = new_bucket(client)
        client.close()
        url = f"s3://{bucket}/p?endpoint={server.endpoint}&timeout=0.5"
        assert kiln_remote(url, "push", "--key", key).returncode == 0
        os.kill(server.proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        r = kiln_remote(url, "ensure", str(model), *spec_args(), "--dest", str(tmp_path / "dest"),
                        env={"KILN_HOME": str(tmp_path / "empty")})
        elapsed = time.monotonic() - t0
        # 3 attempts x 0.5 s + backoff + start-up; before the fix `kiln ls --remote` waited > 5 min.
        _assert_clean_error(r, server.endpoint, elapsed, bound=15)
        assert "did not answer within 0.5 s" in r.stderr, r.stderr
        assert not (tmp_path / "dest").exists()
    finally:
        server.stop()


def test_default_s3_waits_are_bounded(s3_view: RemoteView) -> None:
    """With no timeout configured, one request gives up within a minute (plus backoff)."""
    remote = open_remote(s3_view.url)
    assert isinstance(remote, S3Remote)
    cfg = remote.client.meta.config
    attempts = cfg.retries["total_max_attempts"]
    assert 1 <= attempts <= 4
    assert attempts * (cfg.read_timeout + cfg.connect_timeout) <= 60
    with pytest.raises(RemoteError, match="timeout"):
        open_remote(s3_view.url + "&timeout=soon")


def test_blob_changed_behind_kilns_back_fails_loudly(remote: RemoteView, model: Path, tmp_path: Path) -> None:
    files = _files(1)
    key = store_put(write_tree(tmp_path / "art", files), model)
    assert kiln_remote(remote.url, "push", "--key", key).returncode == 0
    digest = "sha256:" + hashlib.sha256(files["engine/model.pt2"]).hexdigest()
    victim = blob_key(digest)
    assert remote.objects()[victim] == len(files["engine/model.pt2"])
    remote.write(victim, random.Random(99).randbytes(len(files["engine/model.pt2"])))  # same size, other bytes
    assert remote.objects()[victim] == len(files["engine/model.pt2"])

    deploy = {"KILN_HOME": str(tmp_path / "deploy")}
    dest = tmp_path / "serving" / "engine"
    r = kiln_remote(remote.url, "ensure", str(model), *spec_args(), "--dest", str(dest), env=deploy)
    assert r.returncode in (1, 2), (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert victim in r.stderr and ("WARNING" in r.stderr or r.returncode == 2), r.stderr
    assert "changed behind Kiln's back" in r.stderr
    assert not dest.exists()
    assert not (tmp_path / "serving").exists() or not any((tmp_path / "serving").iterdir())
    assert json.loads(run_kiln("ls", "--json", env=deploy).stdout) == []
    leftovers = [p for p in (tmp_path / "deploy" / "tmp").rglob("*") if p.is_file()]
    assert not leftovers, leftovers

    js = kiln_remote(remote.url, "ensure", str(model), *spec_args(), "--dest", str(dest), "--json", env=deploy)
    assert js.returncode == 1 and any(victim in d for d in json.loads(js.stdout)["damaged"])
    pulled = kiln_remote(remote.url, "pull", "--key", key, env=deploy)
    assert pulled.returncode == 2 and victim in pulled.stderr and "Traceback" not in pulled.stderr
    assert json.loads(run_kiln("ls", "--json", env=deploy).stdout) == []

    # The repair the message advises: delete the object, push again from a good store.
    assert "Delete that object from the remote" in pulled.stderr
    remote.delete(victim)
    repushed = kiln_remote(remote.url, "push", "--key", key, "--json")
    assert repushed.returncode == 0 and json.loads(repushed.stdout)[0]["uploaded_blobs"] == 1, repushed.stdout
    ok = kiln_remote(remote.url, "ensure", str(model), *spec_args(), "--dest", str(dest), env=deploy)
    assert ok.returncode == 0, ok.stderr
    assert (dest / "engine" / "model.pt2").read_bytes() == files["engine/model.pt2"]


def _hostile_copy(remote: RemoteView, key: str, layer_path: str) -> None:
    """Rewrite the artifact's manifest with one hostile path and point its entry at it."""
    [ekey] = [k for k in remote.objects() if k.startswith("index/")]
    entry = json.loads(remote.read(ekey))
    manifest = json.loads(remote.read(blob_key(entry["manifest"])))
    manifest["layers"][0]["annotations"]["org.opencontainers.image.title"] = layer_path
    data = json.dumps(manifest, sort_keys=True, indent=1).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    remote.write(blob_key(digest), data)  # digest-correct: only the content is hostile
    entry["manifest"] = digest
    remote.write(ekey, json.dumps(entry).encode())


HOSTILE_PATHS = ["../../escaped.bin", "/tmp/kiln-absolute-escape.bin", "engine/../../escaped.bin"]


def test_hostile_remote_manifest_is_refused(remote: RemoteView, model: Path, tmp_path: Path) -> None:
    key = store_put(write_tree(tmp_path / "art", _files(2)), model)
    assert kiln_remote(remote.url, "push", "--key", key).returncode == 0
    deploy = {"KILN_HOME": str(tmp_path / "deploy" / "store")}
    dest = tmp_path / "deploy" / "serving" / "engine"
    for layer_path in HOSTILE_PATHS:
        _hostile_copy(remote, key, layer_path)
        r = kiln_remote(remote.url, "ensure", str(model), *spec_args(), "--dest", str(dest), env=deploy)
        assert r.returncode in (1, 2) and "Traceback" not in r.stderr, r.stderr
        assert "unsafe" in r.stderr and repr(layer_path) in r.stderr, r.stderr
    pulled = kiln_remote(remote.url, "pull", "--all", env=deploy)
    assert pulled.returncode == 2 and "unsafe" in pulled.stderr, pulled.stderr
    assert not dest.exists()
    assert json.loads(run_kiln("ls", "--json", env=deploy).stdout) == []
    escaped = [p for p in tmp_path.rglob("escaped.bin")] + [Path("/tmp/kiln-absolute-escape.bin")]
    assert not any(p.exists() for p in escaped)


def test_hostile_remote_index_entry_is_refused(remote: RemoteView, model: Path, tmp_path: Path) -> None:
    """Index entries are untrusted too: their key and model digest become local paths, and
    the place an entry is stored at must be the artifact it describes."""
    key = store_put(write_tree(tmp_path / "art", _files(3)), model)
    other = store_put(write_tree(tmp_path / "art2", _files(4)), model, batch_size=2)
    assert kiln_remote(remote.url, "push", "--all").returncode == 0
    ekey = next(k for k in remote.objects() if k.startswith("index/") and key in k)
    good = remote.read(ekey)
    deploy = {"KILN_HOME": str(tmp_path / "deploy" / "store")}
    dest = tmp_path / "deploy" / "engine"
    for field in ("key", "tree_digest", "other-key"):
        entry = json.loads(good)
        if field == "key":
            entry["key"] = "../../../escaped"  # deploy/store/index/<model>/../../../escaped.json == deploy/escaped.json
        elif field == "tree_digest":
            entry["model"]["tree_digest"] = "sha256:../../../escaped"
        else:  # stored under `key`, describing `other`: must not become a hit for `key`
            entry = json.loads(remote.read(ekey.replace(key, other)))
        remote.write(ekey, json.dumps(entry).encode())
        r = kiln_remote(remote.url, "ensure", str(model), *spec_args(), "--dest", str(dest), "--json", env=deploy)
        assert r.returncode in (1, 2) and "Traceback" not in r.stderr, (field, r.stdout, r.stderr)
        assert "refusing it" in r.stderr, (field, r.stderr)
        assert not dest.exists()
        assert not list(tmp_path.rglob("escaped*")), (field, list(tmp_path.rglob("escaped*")))
    # `pull --all` skips the hostile entry and pulls the good one.
    pulled = kiln_remote(remote.url, "pull", "--all", "--json", env=deploy)
    assert pulled.returncode == 0, pulled.stderr
    assert [p["key"] for p in json.loads(pulled.stdout)] == [other]
    assert [e["key"] for e in json.loads(run_kiln("ls", "--json", env=deploy).stdout)] == [other]
    assert not list(tmp_path.rglob("escaped*"))
