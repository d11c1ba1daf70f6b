"""A push interrupted at any write never leaves an entry a `require: signed` reader accepts unsigned.

The push is cut off at every one of its writes in turn (a stand-in fault: the remote raises
at write N, exactly as a killed process leaves it — each object appears whole or not at all,
and nothing after it is written). After each cut, the remote is read without Kiln: if the
index entry is there, the signature must be there too; and a deployment with a fresh store and
the policy (in-process, kiln.fetch_by_key, as the CLI calls it) either misses (no entry yet) or
is served the signed artifact — never
refused for a missing signature, never served unsigned. Then the push is run again to the end
and the deployment is served. On a filesystem remote and a real S3-protocol server (moto).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from kiln import api
from kiln.cache import Remote
from tests.remote.conftest import RemoteView, aws_env, file_view, moto_server, remote, s3_view  # noqa: F401

from .conftest import artifact, hub_model, put, sign, write_policy


class _Cut(Exception):
    pass


class CutRemote(Remote):
    """Delegates to ``inner``; the write numbered ``cut`` (0-based) raises instead of happening."""

    def __init__(self, inner: Remote, cut: int) -> None:
        self.inner, self.cut, self.writes = inner, cut, 0
        self.url = inner.url

    def _write(self) -> None:
        n, self.writes = self.writes, self.writes + 1
        if n == self.cut:
            raise _Cut(f"cut at write {n}")

    def get(self, key: str, max_size: int) -> bytes | None:
        return self.inner.get(key, max_size)

    def put(self, key: str, data: bytes) -> None:
        self._write()
        self.inner.put(key, data)

    def stat(self, key: str) -> int | None:
        return self.inner.stat(key)

    def upload(self, path: Path, key: str, progress=None) -> None:  # type: ignore[no-untyped-def]
        self._write()
        self.inner.upload(path, key, progress)

    def download(self, key: str, dest: Path, size: int, progress=None) -> None:  # type: ignore[no-untyped-def]
        self.inner.download(key, dest, size, progress)

    def list(self, prefix: str) -> Iterator:  # type: ignore[type-arg]
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)


def _url(view: RemoteView, n: int) -> str:
    if view.kind == "file":
        return str(Path(view.url) / f"run{n}")
    base, _, query = view.url.partition("?")
    return f"{base}/run{n}?{query}"


def test_a_push_cut_at_any_write_never_exposes_an_unsigned_entry(tmp_path: Path, keys, remote: RemoteView) -> None:
    e = put(artifact(tmp_path / "art"), hub_model("acme/llama"))
    sign(e["key"], keys["release"].private)
    policy = write_policy(tmp_path / "p.yaml", [{"name": "ci", "public_key": str(keys["release"].public)}])
    store = api.Store(Path(os.environ["KILN_HOME"]))
    entry = next(store.iter_entries())
    sig_prefix = f"signatures/{e['manifest'][7:]}/"

    # How many writes a whole push makes (blobs, record, manifest, signatures, entry).
    probe = CutRemote(api.open_remote(_url(remote, 999)), cut=-1)
    api.push(store, probe, entry)
    total = probe.writes
    assert total >= 7  # 3 files + record + manifest + signature + provenance + entry (model records too)

    for n in range(total):
        url = _url(remote, n)
        with pytest.raises(_Cut):
            api.push(store, CutRemote(api.open_remote(url), cut=n), entry)
        objs = api.open_remote(url)
        names = {i.key for i in objs.list("")}
        has_entry = any(k.startswith("index/") for k in names)
        if has_entry:
            assert any(k.startswith(sig_prefix) and k.endswith(".sig") for k in names), \
                f"cut at write {n}: the entry is on the remote before its signature"
        # The deployment, in-process (the CLI's own path: kiln.fetch_by_key), with a fresh store.
        trusted = api.load_policy(policy)
        found, path = api.fetch_by_key(e["key"], tmp_path / f"d{n}", store=api.Store(tmp_path / f"deploy{n}",
                                       trust=trusted), remote=api.open_remote(url))
        if has_entry:
            assert path is not None, (n, found.explanation, found.damaged)
        else:
            assert path is None and not found.damaged, (n, found.damaged)  # a miss: nothing announced yet
        # The push, run again, completes what the cut one left.
        api.push(store, api.open_remote(url), entry)
        found, path = api.fetch_by_key(e["key"], tmp_path / f"again{n}", store=api.Store(
            tmp_path / f"deploy-again{n}", trust=trusted), remote=api.open_remote(url))
        assert path is not None, (n, found.explanation)
        assert json.loads((tmp_path / f"again{n}" / "model.sig").read_text())["dsseEnvelope"]
