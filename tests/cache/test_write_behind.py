"""Write-behind: the bytes of a put or a verified copy are handed to writeback as they are written.

The speed is measured in scripts/bench_store.py (docs/benchmarks.md, issue 18, "Put"); here, what
can go wrong: the bytes, the ranges handed to the kernel (contiguous, from the start, never past
what was written), short writes, and the real ``sync_file_range`` call on this machine.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import sys
from pathlib import Path

import pytest

from kiln.cache import _fsutil
from kiln.cache._fsutil import WriteBehind
from kiln.cache._hashmemo import hash_stream


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
