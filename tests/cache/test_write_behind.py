"""Write-behind: the bytes of a put or a verified copy are handed to writeback as they are written.

The speed is measured in scripts/bench_store.py (docs/benchmarks.md, issue 18, "Put"); here, what
can go wrong: the bytes, the ranges handed to the kernel (contiguous, from the start, never past
what was written), short writes, and the real ``sync_file_range`` call on this machine. Downloads
(``Sink``) hand their ranges to a thread of their own: that no writer waits for it, and that it and
its descriptor are gone once the download is closed.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import sys
import threading
from pathlib import Path

import pytest

from kiln.cache import _fsutil
from kiln.cache._fsutil import BackgroundWriteback, WriteBehind
from kiln.cache._hashmemo import hash_stream
from kiln.cache.remotes._bounded import Sink


@pytest.fixture
def ranges(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(_fsutil, "_start_writeback", lambda fd, offset, length: seen.append((offset, length)))
    return seen


def test_a_hashed_copy_hands_every_written_range_to_writeback_once_in_order(
        tmp_path: Path, ranges: list[tuple[int, int]]) -> None:
    data = random.Random(1).randbytes(3 * WriteBehind.EVERY + 12345)
    (tmp_path / "src").write_bytes(data)
    hexdigest, size = hash_stream(tmp_path / "src", tmp_path / "dest")
    assert (tmp_path / "dest").read_bytes() == data
    assert (hexdigest, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert ranges and ranges[0][0] == 0
    for (offset, length), (next_offset, _) in zip(ranges, ranges[1:]):
        assert next_offset == offset + length  # contiguous: no byte handed twice, none skipped
    assert all(length >= WriteBehind.EVERY for _, length in ranges)
    end = ranges[-1][0] + ranges[-1][1]
    assert len(data) - WriteBehind.EVERY < end <= len(data)  # the tail is the fsync's alone


def test_a_file_smaller_than_the_interval_is_left_to_the_fsync(tmp_path: Path, ranges: list[tuple[int, int]]) -> None:
    (tmp_path / "src").write_bytes(b"x" * 1000)
    hash_stream(tmp_path / "src", tmp_path / "dest")
    assert ranges == []


class _ShortWrites(io.RawIOBase):
    """A raw file whose writes take at most 1000 bytes each, as a nearly full disk may."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[no-untyped-def, override]
        take = bytes(b[:1000])
        self.data += take
        return len(take)

    def fileno(self) -> int:
        return -1  # never a real file: sync_file_range would fail with EBADF, which is ignored


def test_short_writes_are_completed_and_counted(ranges: list[tuple[int, int]]) -> None:
    raw = _ShortWrites()
    out = WriteBehind(raw)  # type: ignore[arg-type]
    chunk = random.Random(2).randbytes(WriteBehind.EVERY // 2 + 7)
    for _ in range(3):
        out.write(memoryview(chunk))
    assert bytes(raw.data) == chunk * 3
    assert out.written == 3 * len(chunk)
    assert ranges == [(0, 2 * len(chunk))]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_sync_file_range_is_found_and_accepts_the_call_kiln_makes(tmp_path: Path) -> None:
    call = _fsutil._sync_file_range()
    assert call is not None, "libc has no sync_file_range: write-behind is off on this machine"
    with open(tmp_path / "f", "wb", buffering=0) as f:
        f.write(b"y" * (1 << 20))
        assert call(f.fileno(), 0, 1 << 20, 2) == 0  # 64-bit offsets: wrong argtypes give EINVAL here
        os.fsync(f.fileno())


# ---------------------------------------------------------------- downloads: writeback from a thread of the file's own


class _RecordedCalls:
    """Stands in for libc's sync_file_range: records each call and the file it reached, and can hold
    a call until released (a device queue that is full)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int, int]] = []  # (inode, offset, length, flags)
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, fd: int, offset: int, length: int, flags: int) -> int:
        self.entered.set()
        self.release.wait()
        self.calls.append((os.fstat(fd).st_ino, offset, length, flags))
        return 0


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> _RecordedCalls:
    calls = _RecordedCalls()
    monkeypatch.setattr(_fsutil, "_sync_file_range", lambda: calls)
    return calls


def _writeback_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "kiln-writeback"]


def test_a_download_hands_what_its_parts_wrote_to_writeback_and_stops_its_thread_on_close(
        tmp_path: Path, recorded: _RecordedCalls) -> None:
    every = BackgroundWriteback.EVERY
    data = random.Random(3).randbytes(4 * every + 999)
    halves = [(0, data[: 2 * every]), (2 * every, data[2 * every:])]  # two ranged parts, the second first
    sink = Sink(tmp_path / "blob")
    for offset, part in reversed(halves):
        for at in range(0, len(part), 1 << 20):
            sink.write_at(offset + at, part[at: at + (1 << 20)])
    assert sink.sha256() == ("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    sink.close()
    assert _writeback_threads() == []
    assert (tmp_path / "blob").read_bytes() == data
    inode = os.stat(tmp_path / "blob").st_ino
    assert recorded.calls and {(ino, flags) for ino, _, _, flags in recorded.calls} == {(inode, 2)}
    covered = sorted((offset, offset + length) for _, offset, length, _ in recorded.calls)
    assert all(0 <= lo < hi <= len(data) for lo, hi in covered)
    # Every 8 MiB written goes to writeback; only the last, smaller stretch is left to the fsync.
    assert sum(hi - lo for lo, hi in covered) >= len(data) - every


def test_writers_do_not_wait_for_a_writeback_call_that_waits_on_the_disk(
        tmp_path: Path, recorded: _RecordedCalls) -> None:
    every = BackgroundWriteback.EVERY
    data = random.Random(4).randbytes(3 * every)
    recorded.release.clear()  # the first call blocks, as on a full device queue
    sink = Sink(tmp_path / "blob")
    writer = threading.Thread(target=lambda: [sink.write_at(at, data[at: at + every]) for at in range(0, len(data), every)])
    writer.start()
    writer.join(timeout=60)  # a hang guard, not a timing: a writer that waited would never finish
    assert not writer.is_alive(), "a write waited for the writeback call"
    assert recorded.entered.is_set() and recorded.calls == []  # the call was made, and is still held
    closing = threading.Thread(target=sink.close)
    closing.start()
    recorded.release.set()
    closing.join(timeout=60)
    assert not closing.is_alive() and _writeback_threads() == []
    assert (tmp_path / "blob").read_bytes() == data


def test_without_sync_file_range_a_download_starts_no_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fsutil, "_sync_file_range", lambda: None)
    data = random.Random(5).randbytes(2 * BackgroundWriteback.EVERY + 1)
    sink = Sink(tmp_path / "blob")
    sink.write_at(0, data)
    assert _writeback_threads() == []
    sink.close()
    assert (tmp_path / "blob").read_bytes() == data


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_a_download_with_the_real_call_closes_its_duplicate_descriptor(tmp_path: Path) -> None:
    before = set(os.listdir("/proc/self/fd"))
    data = random.Random(6).randbytes(2 * BackgroundWriteback.EVERY + 5)
    sink = Sink(tmp_path / "blob")
    sink.write_at(0, data)
    sink.fsync()
    sink.close()
    assert _writeback_threads() == []
    assert set(os.listdir("/proc/self/fd")) <= before  # the writer's and the thread's descriptors are both closed
    assert (tmp_path / "blob").read_bytes() == data
