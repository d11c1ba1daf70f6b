"""sha256 of local files, memoised by (device, inode, size, mtime_ns, ctime_ns).

Model directories hold multi-GB weights; hashing them on every `kiln key` would cost
seconds to minutes. A file whose inode, size, mtime and ctime are unchanged still has the
same bytes (ctime cannot be set from user space, so even a write followed by a `touch -d`
back-dating the mtime changes the signature). Memo entries are tiny files written with an
atomic rename, so concurrent writers never leave a half-written entry; a missing or
unreadable entry only means hashing again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Callable

from ._fsutil import WriteBehind, atomic_write_bytes
from ._progress import Progress

CHUNK = 8 * 1024 * 1024


def stat_signature(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def hash_stream(src: Path, dest: Path | None = None, progress: Progress | None = None) -> tuple[str, int]:
    """Hex sha256 and byte count of ``src``, read once; copied to ``dest`` (fsynced) on the way."""
    h = hashlib.sha256()
    size = 0
    with open(src, "rb", buffering=0) as fin, (open(dest, "wb", buffering=0) if dest else contextlib.nullcontext()) as fout:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        out = WriteBehind(fout) if fout is not None else None
        while True:
            n = fin.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            if out is not None:
                out.write(view[:n])
            size += n
            if progress:
                progress(n)
        if fout is not None:
            os.fsync(fout.fileno())
    return h.hexdigest(), size


class HashMemo:
    """Memoised file hashing; ``root=None`` disables the memo (always hashes)."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.hashed_bytes = 0  # bytes actually read, for tests and progress
        # Set by a front end to show progress while large model files are hashed (once each):
        # ``on_hash(path, size)`` before a file is read, ``progress(n)`` as its bytes go by.
        self.on_hash: Callable[[Path, int], None] | None = None
        self.progress: Progress | None = None

    def _entry(self, signature: str) -> Path:
        assert self.root is not None
        name = hashlib.sha256(signature.encode()).hexdigest()
        return self.root / name[:2] / name

    @staticmethod
    def _unchanged(path: Path, signature: str) -> bool:
        """Whether the file still has the stamps it had when hashing began (all of them, not just
        the mtime: a same-size rewrite moves the ctime), so the digest just read may be kept."""
        try:
            return stat_signature(os.stat(path)) == signature
        except OSError:
            return False

    def sha256(self, path: Path) -> str:
        st = os.stat(path)
        signature = stat_signature(st)
        if self.root is not None:
            try:
                cached = self._entry(signature).read_text().strip()
                if len(cached) == 64:
                    return cached
            except OSError:
                pass
        if self.on_hash is not None:
            self.on_hash(path, st.st_size)
        digest, size = hash_stream(path, None, self.progress)
        self.hashed_bytes += size
        if self.root is not None and self._unchanged(path, signature):
            try:
                atomic_write_bytes(self._entry(signature), digest.encode())
            except OSError:
                pass  # a read-only store still hashes correctly, just without the memo
        return digest
