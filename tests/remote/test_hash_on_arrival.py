"""A pull hashes each blob as its bytes arrive, in one pass, and still refuses bad bytes.

The download sink hashes in file order while parts land at their offsets (from several
threads), so :meth:`Blobs.put_downloaded` need not read the file again; a remote whose
``download`` returns no digest (a wrapper, a third-party backend) is hashed after landing,
as before. Against a real S3-protocol server (moto on loopback) and a shared directory.
"""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from kiln.cache import Store
from kiln.cache import _blobs
from kiln.cache._sync import pull, push
from kiln.cache.remotes import S3Remote, open_remote
from kiln.cache.remotes._bounded import Sink
from kiln.errors import RemoteError
from tests.remote.conftest import RemoteView, S3View, blob_key, store_put, tree, write_tree


def _chunks(data: bytes, rng: random.Random) -> list[tuple[int, bytes]]:
    out, at = [], 0
    while at < len(data):
        n = rng.randint(1, 70_000)
        out.append((at, data[at:at + n]))
        at += n
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sink_hashes_out_of_order_writes_in_file_order(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(1_000_000)
    chunks = _chunks(data, rng)
    rng.shuffle(chunks)
    sink = Sink(tmp_path / "f")
    # Four writers, each with its own share of the chunks, as ranged parts arrive.
    shares = [chunks[i::4] for i in range(4)]
    threads = [threading.Thread(target=lambda s=s: [sink.write_at(o, c) for o, c in s]) for s in shares]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    digest = sink.sha256()
    sink.close()
    assert (tmp_path / "f").read_bytes() == data
    assert digest == ("sha256:" + hashlib.sha256(data).hexdigest(), len(data))


def test_sink_reports_a_gap_as_fewer_bytes_and_a_rewrite_as_unknown(tmp_path: Path) -> None:
    gap = Sink(tmp_path / "gap")
    gap.write_at(0, b"abc")
    gap.write_at(10, b"xyz")  # bytes 3..9 never written
    assert gap.sha256() == ("sha256:" + hashlib.sha256(b"abc").hexdigest(), 3)
    gap.close()

    again = Sink(tmp_path / "again")
    again.write_at(0, b"first")
    again.write_at(0, b"FIRST")  # a retried part writes over what was hashed
    assert again.sha256() is None  # only reading the file tells what it holds now
    again.close()


def _artifact(tmp_path: Path) -> dict[str, bytes]:
    rng = random.Random(7)
    return {"engine.bin": rng.randbytes((11 << 20) + 5), "weights.bin": rng.randbytes(3 << 20), "config.json": b"{}"}


def _pushed(url: str, model: Path, tmp_path: Path) -> tuple[dict[str, bytes], Store, Any, Any]:
    """An artifact put in a builder's store (`kiln store put`) and pushed to ``url``."""
    files = _artifact(tmp_path)
    src_store = Store(tmp_path / "builder")
    store_put(write_tree(tmp_path / "art", files), model, env={"KILN_HOME": str(src_store.root)})
    [entry] = list(src_store.iter_entries())
    rem = open_remote(url)
    push(src_store, rem, entry)
    return files, src_store, entry, rem


def test_pull_verifies_without_reading_the_downloads_again(
    remote: RemoteView, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(S3Remote, "PART_SIZE", 5 << 20)  # the 11 MiB file comes in 3 parallel ranged parts
    files, _, entry, rem = _pushed(remote.url, model, tmp_path)

    rehashed: list[Path] = []
    real = _blobs.hash_file

    def counting(path: Path, progress: Any) -> tuple[str, int]:
        rehashed.append(Path(path))
        return real(path, progress)

    monkeypatch.setattr(_blobs, "hash_file", counting)
    fresh = Store(tmp_path / "deployer")
    result = pull(fresh, rem, entry)
    assert result.downloaded == 3 and not result.retried
    downloads = [p for p in rehashed if p.parent == fresh.root / "tmp"]
    assert downloads == [], f"downloaded files were read again to hash them: {downloads}"
    manifest = fresh.check_artifact(entry)  # every blob is there, with its digest (stamped)
    for f in manifest.files:
        assert "sha256:" + hashlib.sha256(fresh.blob_path(f.digest).read_bytes()).hexdigest() == f.digest
    fresh.materialize(manifest, tmp_path / "out")
    assert tree(tmp_path / "out") == files


class _NoDigest:
    """A remote wrapper whose download returns no digest (as a third-party backend may)."""

    def __init__(self, inner: Any, corrupt: bool = False) -> None:
        self.inner, self.corrupt = inner, corrupt

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def download(self, key: str, dest: Path, size: int, progress: Any = None) -> None:
        self.inner.download(key, dest, size, progress)
        if self.corrupt and size:
            data = bytearray(dest.read_bytes())
            data[size // 2] ^= 0xFF
            dest.write_bytes(bytes(data))


def test_a_download_without_a_digest_is_hashed_after_landing(
    s3_view: S3View, model: Path, tmp_path: Path
) -> None:
    files, _, entry, rem = _pushed(s3_view.url, model, tmp_path)

    good = Store(tmp_path / "good")
    assert pull(good, _NoDigest(rem), entry).downloaded == 3  # type: ignore[arg-type]
    good.materialize(good.check_artifact(entry), tmp_path / "out")
    assert tree(tmp_path / "out") == files

    bad = Store(tmp_path / "bad")
    with pytest.raises(RemoteError, match="corrupt or was changed"):
        pull(bad, _NoDigest(rem, corrupt=True), entry)  # type: ignore[arg-type]
    assert list(bad.iter_entries()) == []


def test_a_flipped_byte_on_the_remote_is_refused_by_the_hash_on_arrival(
    remote: RemoteView, model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(S3Remote, "PART_SIZE", 5 << 20)
    _, src_store, entry, rem = _pushed(remote.url, model, tmp_path)
    big = next(f for f in src_store.read_manifest(entry.manifest).files if f.path == "engine.bin")
    data = bytearray(remote.read(blob_key(big.digest)))
    data[(7 << 20) + 3] ^= 0x01  # in the second ranged part, hashed after the first has landed
    remote.write(blob_key(big.digest), bytes(data))

    fresh = Store(tmp_path / "deployer")
    with pytest.raises(RemoteError, match="corrupt or was changed"):
        pull(fresh, rem, entry)
    assert list(fresh.iter_entries()) == []
    assert not fresh.has_blob(big.digest)
    assert list((fresh.root / "tmp").iterdir()) == []
