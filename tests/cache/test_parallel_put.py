"""An artifact's files are stored, and copied out, several at a time; one failing file stops the others.

Through the real publish path (``api.put``) and the real materialiser (``Store.materialize``).
The put's failure is a stand-in: a wrapper of ``Blobs.put_file`` that raises for one path (a
full disk or an unreadable file would do the same, but cannot be caused on one file of a temp
directory reliably). The copy's failure is real: a byte of one blob flipped on disk.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest

from kiln.cache import Store, _materialize, _per_file
from kiln.cache._blobs import Blobs
from kiln.errors import CorruptBlobError, StoreError

from .test_materialize import Pub, write_tree


@pytest.fixture
def pub(tmp_path: Path) -> Pub:
    return Pub(tmp_path, Store(tmp_path / "store"))


def _files(n: int, size: int) -> dict[str, bytes]:
    rng = random.Random(n)
    return {f"part-{i:02d}.bin": rng.randbytes(size) for i in range(n)}


def test_files_stored_in_parallel_keep_path_order_and_bytes(pub: Pub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_per_file, "FILE_THREADS", 4)
    seen: set[str] = set()
    real = Blobs.put_file

    def recording(self, src, **kw):  # type: ignore[no-untyped-def]
        seen.add(threading.current_thread().name)
        return real(self, src, **kw)

    monkeypatch.setattr(Blobs, "put_file", recording)
    files = _files(9, 300_000)
    manifest = pub.publish(1, files)
    assert [f.path for f in manifest.files] == sorted(files)
    for f in manifest.files:
        assert f.digest == "sha256:" + hashlib.sha256(files[f.path]).hexdigest() and f.size == len(files[f.path])
    assert len({n for n in seen if n.startswith("kiln-put")}) >= 2, seen  # really in parallel


def test_one_failing_file_stops_the_others_and_publishes_nothing(pub: Pub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_per_file, "FILE_THREADS", 2)
    real = Blobs.put_file

    def failing(self, src, **kw):  # type: ignore[no-untyped-def]
        if Path(src).name == "part-00.bin":
            raise StoreError(f"cannot write {src}: stand-in for a full disk")
        return real(self, src, **kw)

    monkeypatch.setattr(Blobs, "put_file", failing)
    files = _files(6, 64 << 20)  # 8 chunks each: the others notice the failure at their next chunk
    with pytest.raises(StoreError, match="stand-in for a full disk"):
        pub.publish(1, files)
    store = pub.store
    assert list(store.iter_entries()) == []
    stored = [p for p in files if store.has_blob("sha256:" + hashlib.sha256(files[p]).hexdigest())]
    assert len(stored) < len(files) - 1, f"every other file was stored anyway: {stored}"
    assert [p.name for p in (store.root / "tmp").iterdir()] == []  # no temp file stays


# ---------------------------------------------------------------- copying out: the same pool


def _threads_placing_files(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The names of the threads that place a materialised file, filled in as they do."""
    seen: set[str] = set()
    real = _materialize._place

    def recording(*a, **kw):  # type: ignore[no-untyped-def]
        seen.add(threading.current_thread().name)
        return real(*a, **kw)

    monkeypatch.setattr(_materialize, "_place", recording)
    return seen


def test_a_copied_out_artifact_is_written_in_parallel_with_every_byte(
        pub: Pub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_per_file, "FILE_THREADS", 4)
    seen = _threads_placing_files(monkeypatch)
    files = {**_files(6, 300_000), "sub/dir/config.json": b"{}"}
    manifest = pub.publish(1, files)
    reported: list[int] = []
    dest = pub.store.materialize(manifest, tmp_path / "deploy", progress=reported.append)
    assert {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == files
    assert sum(reported) == sum(len(b) for b in files.values())
    assert len({n for n in seen if n.startswith("kiln-copy")}) >= 2, seen  # really in parallel
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".deploy")] == []  # no staging left


def test_hard_links_are_made_in_the_calling_thread(pub: Pub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen = _threads_placing_files(monkeypatch)
    manifest = pub.publish(1, _files(4, 1000))
    pub.store.materialize(manifest, tmp_path / "deploy", link=True)
    assert seen == {threading.current_thread().name}  # a link is one system call: no pool to start


def _no_reflinks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Copies, chunk by chunk, also where this filesystem could clone (XFS, btrfs): a clone is one
    system call reported as one chunk, and these tests count the chunks of the files that stop."""
    monkeypatch.setattr(_materialize, "_clone", lambda src, dest: False)


def test_a_corrupt_blob_stops_the_other_copies_and_leaves_no_destination(
        pub: Pub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_per_file, "FILE_THREADS", 2)
    _no_reflinks(monkeypatch)
    size = 64 << 20  # 8 chunks each: the others notice the failure at their next chunk
    files = _files(6, size)
    manifest = pub.publish(1, files)
    bad = next(f for f in manifest.files if f.path == "part-00.bin")
    blob = pub.store.blob_path(bad.digest)
    os.chmod(blob, 0o644)
    with open(blob, "r+b") as f:  # a real bit flip on disk: same size, new ctime, so the stamp no longer vouches
        f.seek(12345)
        byte = f.read(1)
        f.seek(12345)
        f.write(bytes([byte[0] ^ 0xFF]))
    reported: list[int] = []
    with pytest.raises(CorruptBlobError):
        pub.store.materialize(manifest, tmp_path / "deploy", progress=reported.append)
    assert not (tmp_path / "deploy").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".deploy")] == []  # the staging went too
    assert sum(reported) < (len(files) - 2) * size, f"the other files were copied anyway: {sum(reported)} bytes"


def _fails_once_another_file_moved(real, name_of, reported_first: threading.Event):  # type: ignore[no-untyped-def]
    """``real``, except that for part-00 it waits until another file has reported a chunk, then raises:
    a failure that lands while a sibling is midway (a stand-in for a full disk at that moment)."""

    def wrapper(*a, **kw):  # type: ignore[no-untyped-def]
        if name_of(*a, **kw) == "part-00.bin":
            assert reported_first.wait(timeout=120), "no other file started"  # a hang guard, not a timing
            raise StoreError("stand-in for a full disk, midway through another file")
        return real(*a, **kw)

    return wrapper


@pytest.mark.parametrize("step", ["put", "copy"])
def test_a_file_midway_stops_at_its_next_chunk_when_a_sibling_fails(
        pub: Pub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, step: str) -> None:
    monkeypatch.setattr(_per_file, "FILE_THREADS", 2)
    size = 128 << 20  # 16 chunks of 8 MiB: far more than the main thread needs to see the failure and stop them
    files = _files(2, size)
    moved = threading.Event()
    reported: list[int] = []

    def progress(n: int) -> None:
        reported.append(n)
        moved.set()

    if step == "put":
        monkeypatch.setattr(Blobs, "put_file", _fails_once_another_file_moved(
            Blobs.put_file, lambda self, src, **kw: Path(src).name, moved))
        src = tmp_path / "src"
        write_tree(src, files)
        with pytest.raises(StoreError, match="stand-in"):
            pub.store.publish(src, key="k", spec={}, model={}, toolchain={}, record={}, progress=progress)
    else:
        _no_reflinks(monkeypatch)
        manifest = pub.publish(1, files)
        monkeypatch.setattr(_materialize, "_place", _fails_once_another_file_moved(
            _materialize._place, lambda blobs, digest, target, **kw: target.name, moved))
        with pytest.raises(StoreError, match="stand-in"):
            pub.store.materialize(manifest, tmp_path / "deploy", progress=progress)
    assert 0 < sum(reported) < size, f"part-01 went on to its end after part-00 failed: {sum(reported)} bytes"


def test_a_blob_being_rehashed_stops_at_its_next_chunk_when_a_sibling_fails(
        pub: Pub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A blob whose stamp no longer vouches for it is hashed again before it is copied; that re-hash
    stops with its siblings too, rather than reading the whole blob first."""
    monkeypatch.setattr(_per_file, "FILE_THREADS", 2)
    _no_reflinks(monkeypatch)
    size = 128 << 20  # 16 chunks of 8 MiB
    files = _files(2, size)
    manifest = pub.publish(1, files)
    stale = next(f for f in manifest.files if f.path == "part-01.bin")
    os.chmod(pub.store.blob_path(stale.digest), 0o444)  # a new ctime, same bytes: the stamp no longer vouches
    moved = threading.Event()
    reported: list[int] = []

    def progress(n: int) -> None:
        reported.append(n)
        moved.set()

    monkeypatch.setattr(_materialize, "_place", _fails_once_another_file_moved(
        _materialize._place, lambda blobs, digest, target, **kw: target.name, moved))
    with pytest.raises(StoreError, match="stand-in"):
        pub.store.materialize(manifest, tmp_path / "deploy", progress=progress)
    assert sum(reported) == 0  # the re-hash counts no bytes, and no copy began
    assert 0 < len(reported) < size >> 23, f"the re-hash read all {len(reported)} chunks after part-00 failed"


# ---------------------------------------------------------------- the pool itself


def test_the_failure_raised_is_the_earliest_not_the_first_file_s() -> None:
    """File "a" fails only because "b" failed first (as a file whose blob its sibling quarantined
    finds it missing): the cause, b's error, is what the caller sees."""

    def work(item: str, advance) -> None:  # type: ignore[no-untyped-def]
        if item == "b":
            raise ValueError("b failed first")
        for _ in range(100_000):  # a hang guard: b's failure stops this within a few polls
            try:
                advance(0)
            except _per_file._Stopped:
                raise KeyError("a failed because b did") from None
            time.sleep(0.001)
        raise AssertionError("a was never stopped")

    with pytest.raises(ValueError, match="b failed first"):
        _per_file.each_file(["a", "b"], work, progress=None, threads=2)


def test_an_interrupt_stops_the_running_files_and_starts_no_more() -> None:
    """A real SIGINT to the main thread while it waits for the files (Ctrl-C): the running files
    stop at their next chunk, the queued ones never start, and the interrupt goes on up."""
    main = threading.main_thread().ident
    assert main is not None
    started: list[str] = []
    chunks = {"a": 0, "b": 0}

    def work(item: str, advance) -> None:  # type: ignore[no-untyped-def]
        started.append(item)
        if item == "a":
            signal.pthread_kill(main, signal.SIGINT)
        for _ in range(100_000):  # a hang guard, as above
            advance(1)
            chunks[item] += 1
            time.sleep(0.001)

    with pytest.raises(KeyboardInterrupt):
        _per_file.each_file(["a", "b", "c", "d"], work, progress=None, threads=2)
    assert "c" not in started and "d" not in started
    assert all(n < 100_000 for n in chunks.values()), chunks
