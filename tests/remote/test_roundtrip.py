"""Push, wipe, ensure: an artifact goes to a remote and comes back byte for byte.

Against a real S3-protocol server (moto on loopback) and a shared directory. The multipart
test lowers S3Remote.PART_SIZE in-process so a 13 MiB file is uploaded in three parts and
downloaded with parallel ranged GETs, which the server's own request log confirms.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from kiln import api
from kiln.cache import Store
from kiln.cache.remotes import S3Remote, open_remote
from kiln.cache._sync import pull, push, remote_entry
from kiln.spec import BuildSpec
from tests.remote.conftest import (
    TOOLCHAIN,
    MotoServer,
    RemoteView,
    S3View,
    blob_key,
    check_remote,
    kiln_remote,
    spec_args,
    store_put,
    tree,
    write_tree,
)
from tests.conftest import run_kiln


def artifact_files(seed: int = 1) -> dict[str, bytes]:
    rng = random.Random(seed)
    weights = rng.randbytes(3 << 20)
    return {
        "engine/model.pt2": rng.randbytes((1 << 20) + 17),
        "weights/shard-0.safetensors": weights,
        "weights/copy-of-shard-0.safetensors": weights,  # same bytes: one blob, two paths
        "config.json": json.dumps({"seed": seed}).encode(),
        "tokenizer/tokenizer.json": b'{"version": "1.0"}',
        "empty.txt": b"",
        "build.log": b"compiled\n" * 100,
    }


def test_push_wipe_ensure_reproduces_the_artifact(remote: RemoteView, model: Path, tmp_path: Path) -> None:
    files = artifact_files()
    src = write_tree(tmp_path / "art", files)
    key = store_put(src, model)
    unique = len(set(files.values()))

    pushed = kiln_remote(remote.url, "push", "--key", key, "--json")
    assert pushed.returncode == 0, pushed.stderr
    [p] = json.loads(pushed.stdout)
    assert p["key"] == key
    assert p["uploaded_blobs"] == unique + 2  # file blobs + build record + manifest
    assert p["skipped_blobs"] == 0
    assert check_remote(remote, deep=True).keys() == {key}
    assert f"index/{json.loads(run_kiln('ls', '--json').stdout)[0]['model']['tree_digest'][7:]}/{key}.json" in remote.objects()

    # A deployment machine: an empty store, only the remote.
    deploy = {"KILN_HOME": str(tmp_path / "deploy-store")}
    dest = tmp_path / "serving" / "engine"
    ensured = kiln_remote(remote.url, "ensure", str(model), *spec_args(), "--dest", str(dest), "--json", env=deploy)
    assert ensured.returncode == 0, ensured.stderr
    out = json.loads(ensured.stdout)
    assert out["hit"] and out["source"] == "remote" and out["key"] == key
    assert tree(dest) == files
    assert [e["key"] for e in json.loads(run_kiln("ls", "--json", env=deploy).stdout)] == [key]
    assert run_kiln("verify", env=deploy).returncode == 0

    # Pushing an unchanged artifact again moves nothing but the index entry.
    again = kiln_remote(remote.url, "push", "--key", key, "--json")
    assert again.returncode == 0, again.stderr
    [a] = json.loads(again.stdout)
    assert (a["uploaded_blobs"], a["uploaded_bytes"]) == (0, 0)
    assert a["skipped_blobs"] == unique + 2

    listed = kiln_remote(remote.url, "ls", "--remote", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [e["key"] for e in json.loads(listed.stdout)] == [key]

    # `pull --key` into a third store, then a second pull reuses every blob.
    third = {"KILN_HOME": str(tmp_path / "third-store")}
    pulled = kiln_remote(remote.url, "pull", "--key", key[:12], "--json", env=third)
    assert pulled.returncode == 0, pulled.stderr
    [q] = json.loads(pulled.stdout)
    assert q["downloaded_blobs"] == unique and q["downloaded_bytes"] == sum({d: len(d) for d in files.values()}.values())
    fetched = run_kiln("fetch", str(model), *spec_args(), "--dest", str(tmp_path / "third-dest"), env=third)
    assert fetched.returncode == 0, fetched.stderr
    assert tree(tmp_path / "third-dest") == files


def _resolution(store: Store, model: Path, batch_size: int = 1) -> api.Resolution:
    spec = BuildSpec(target="torch-aoti", model=str(model), n_positions=256, batch_size=batch_size)
    return api.resolve(spec, store=store, toolchain=TOOLCHAIN)


def test_multipart_upload_and_ranged_parallel_download(
    s3_view: S3View, moto_server: MotoServer, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    part = 5 << 20  # S3's smallest part size
    monkeypatch.setattr(S3Remote, "PART_SIZE", part)
    rng = random.Random(5)
    files = {"engine/rank0.engine": rng.randbytes(2 * part + 12345), "config.json": b"{}", "small.bin": rng.randbytes(70_000)}
    src = write_tree(tmp_path / "art", files)
    store = Store(tmp_path / "builder")
    res = _resolution(store, model)
    entry = api.put(res, src, store=store)
    remote = open_remote(s3_view.url)
    assert isinstance(remote, S3Remote) and remote.transfer.multipart_chunksize == part

    result = push(store, remote, entry)
    assert result.uploaded == 5 and result.skipped == 0
    manifest = store.read_manifest(entry.manifest)
    big = next(f for f in manifest.files if f.path == "engine/rank0.engine")
    assert s3_view.etag(blob_key(big.digest)).endswith("-3"), "not a 3-part multipart upload"
    assert check_remote(s3_view, deep=True).keys() == {entry.key}

    fresh = Store(tmp_path / "deployer")
    log_before = len(moto_server.log_text())
    got = remote_entry(remote, entry.model_hex, entry.key)
    assert got == entry
    pulled = pull(fresh, remote, got)
    assert pulled.downloaded == 3 and not pulled.retried
    # The server saw ranged GETs (206 Partial Content) of the big blob, one per part (werkzeug's
    # request log; it colours some lines, hence the [^"]*).
    log = moto_server.log_text()[log_before:]
    ranged = re.findall(rf'GET /{s3_view.bucket}/{s3_view.prefix}/{blob_key(big.digest)} HTTP/1.1[^"]*" 206', log)
    assert len(ranged) >= 3, log[-3000:]
    result2, path = api.fetch(_resolution(fresh, model), tmp_path / "dest", store=fresh)
    assert result2.hit and path is not None
    assert tree(path) == files


def test_lookup_reads_through_and_keeps_the_artifact(remote: RemoteView, model: Path, tmp_path: Path) -> None:
    files = artifact_files(seed=2)
    key = store_put(write_tree(tmp_path / "art", files), model)
    assert kiln_remote(remote.url, "push", "--key", key).returncode == 0

    empty = {"KILN_HOME": str(tmp_path / "empty-store")}
    hit = kiln_remote(remote.url, "lookup", str(model), *spec_args(), "--json", env=empty)
    assert hit.returncode == 0, hit.stderr
    data = json.loads(hit.stdout)
    assert data["hit"] and data["source"] == "remote" and data["key"] == key
    assert any("pulled from" in n for n in data["notes"])
    # It stayed: the next lookup is local, without any remote at all.
    assert [e["key"] for e in json.loads(run_kiln("ls", "--json", env=empty).stdout)] == [key]
    local = run_kiln("lookup", str(model), *spec_args(), "--json", env=empty)
    assert local.returncode == 0 and json.loads(local.stdout)["source"] == "local"
    human = kiln_remote(remote.url, "lookup", str(model), *spec_args(), env=empty)
    assert human.returncode == 0 and human.stdout.startswith("hit (local)")


def test_miss_explains_nearest_entries_local_and_remote(remote: RemoteView, model: Path, tmp_path: Path) -> None:
    key4 = store_put(write_tree(tmp_path / "a4", artifact_files(4)), model, batch_size=4)
    assert kiln_remote(remote.url, "push", "--key", key4).returncode == 0
    other = {"KILN_HOME": str(tmp_path / "other-store")}
    store_put(write_tree(tmp_path / "a2", artifact_files(3)), model, batch_size=2, env=other)

    miss = kiln_remote(remote.url, "lookup", str(model), *spec_args(8), env=other)
    assert miss.returncode == 1, miss.stderr
    assert "batch_size: want 8, have 4" in miss.stdout  # the remote's entry
    assert "batch_size: want 8, have 2" in miss.stdout  # the local one
    assert "2 torch-aoti artifact(s)" in miss.stdout and remote.url.split("?")[0].split("://")[-1] in miss.stdout
    js = kiln_remote(remote.url, "lookup", str(model), *spec_args(8), "--json", env=other)
    assert js.returncode == 1
    data = json.loads(js.stdout)
    assert not data["hit"] and any(key4[:12] in line for line in data["explanation"])
    # A miss pulls nothing.
    assert len(json.loads(run_kiln("ls", "--json", env=other).stdout)) == 1
