"""Small filesystem primitives the store's crash safety rests on.

Every file that becomes visible under a final name is first written in full to a temporary
name *in the same directory tree* (same filesystem), fsynced, and then renamed: rename is
atomic on POSIX filesystems, NFS included, so a reader sees the old state or the new state,
never a partial file.

A write that fails because the filesystem is full (``ENOSPC``), the user's quota is spent
(``EDQUOT``) or the file is larger than the filesystem or the process's file-size limit allows
(``EFBIG``) is not a bug: :func:`full_disk_error` turns it into one
:class:`~kiln.errors.StoreError` line naming the path being written, the store and the fix,
and every writer removes its partial temp file first. :func:`store_writes` is the one place
that conversion is done, for every write the store makes (blobs, index entries, stamps).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .._input import show_path
from ..errors import StoreError

# errno values that mean "no room for these bytes here", whatever wrote them.
FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG) if e is not None)


def full_disk_error(e: OSError, path: Path | str | None, store_root: Path) -> StoreError:
    """The one-line StoreError for a write ``e`` (errno in FULL_ERRNOS) of ``path`` in the store."""
    where = show_path(path if path is not None else (e.filename or store_root))
    if e.errno == errno.EFBIG:
        return StoreError(
            f"cannot write {where}: file too large (EFBIG: above the filesystem's or this process's file-size limit, "
            f"see `ulimit -f`) in the Kiln store at {show_path(store_root)}; raise the limit, or set KILN_HOME to a "
            "filesystem that allows larger files."
        )
    what = "disk quota exceeded (EDQUOT)" if e.errno == getattr(errno, "EDQUOT", None) else "no space left on device (ENOSPC)"
    return StoreError(
        f"cannot write {where}: {what} in the Kiln store at {show_path(store_root)}; free space on that filesystem, "
        "or run `kiln gc --max-size SIZE`, or set KILN_HOME elsewhere."
    )


def store_write_error(e: OSError, path: Path | str, store_root: Path) -> StoreError:
    """The one-line StoreError for any failed write of ``path`` in the store: a full disk's
    (:func:`full_disk_error`), or one naming the errno for the rest (EIO, EROFS, EACCES…)."""
    if e.errno in FULL_ERRNOS:
        return full_disk_error(e, path, store_root)
    return StoreError(
        f"cannot write {show_path(path)} in the Kiln store at {show_path(store_root)}: {e.strerror or e}; check that "
        "filesystem (permissions, read-only mount, I/O errors in the kernel log), or set KILN_HOME elsewhere."
    )


@contextlib.contextmanager
def store_writes(path: Path | str | None, store_root: Path | None) -> Iterator[None]:
    """Turn a full-disk OSError raised inside into :func:`full_disk_error` (others pass through).

    ``path`` names what is being written; ``store_root`` None disables the conversion (a
    caller that handles OSError itself)."""
    try:
        yield
    except OSError as e:
        if store_root is None or e.errno not in FULL_ERRNOS:
            raise
        raise full_disk_error(e, path, store_root) from None


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class WriteBehind:
    """Writes a new file's bytes, and starts the disk on them while more are still coming.

    A put (or a verified copy) is CPU work, sha256 and the copy, followed by disk work, the
    fsync; left alone, the kernel writes most of the bytes back only when the fsync asks, so the
    disk idles while the CPU works and then the other way round. Every ``EVERY`` bytes,
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)`` queues the bytes written since the last call for
    writeback, without waiting. The fsync at the end is still what makes the file durable and
    still reports a write error (this flag alone neither waits nor consumes one), so the store's
    ordering guarantees are those of the fsync. Linux only, and best effort: elsewhere, or where
    the call fails, only the writes happen. Measured: docs/benchmarks.md, issue 18, "Put".
    """

    EVERY = 8 << 20

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw  # opened with buffering=0
        self.written = 0
        self.queued = 0  # bytes [0, queued) have been handed to writeback

    def write(self, data: memoryview) -> None:
        done = 0
        while done < len(data):  # an unbuffered write may be short (a full disk, a file-size limit)
            done += self.raw.write(data[done:])  # the next one raises ENOSPC/EFBIG
        self.written += done
        if self.written - self.queued >= self.EVERY:
            _start_writeback(self.raw.fileno(), self.queued, self.written - self.queued)
            self.queued = self.written


def _start_writeback(fd: int, offset: int, length: int) -> None:
    call = _sync_file_range()
    if call is not None:
        call(fd, offset, length, 2)  # SYNC_FILE_RANGE_WRITE; a failure is the fsync's to report


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # only here: lookups never need it

    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return call  # type: ignore[no-any-return]


def remove_tree(path: Path) -> None:
    """Remove a directory tree if it is there, ignoring errors (cleanup of Kiln's own temp trees).

    shutil is imported here, not by the modules that clean up: with bz2 and lzma it is ~1.5 ms
    of every `kiln lookup`, which removes nothing (docs/benchmarks.md, issue 18, "Lookup")."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def unlink_quiet(path: Path) -> None:
    """Remove a file if it is there: used for cleanup, where a missing file is the goal."""
    try:
        os.unlink(path)
    except OSError:
        pass


def temp_name(final: Path) -> Path:
    # Hidden, unique, and in the final directory, so the rename never crosses filesystems.
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")


def atomic_write_bytes(final: Path, data: bytes, *, mode: int = 0o644, durable: bool = False,
                       store_root: Path | None = None) -> None:
    """Write ``data`` to ``final`` so that readers see all of it or none of it.

    With ``store_root``, a full disk is a StoreError naming ``final`` (see :func:`store_writes`);
    the partial temp file is removed either way."""
    tmp = temp_name(final)
    with store_writes(final, store_root):
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, final)
        except BaseException:
            unlink_quiet(tmp)
            raise
    if durable:
        fsync_dir(final.parent)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``).

    Replacing a non-empty directory by rename alone takes two renames, and between them the
    destination does not exist; an exchange leaves no such moment. Returns False where the
    kernel, libc or filesystem cannot exchange (the caller falls back to two renames).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes  # only here: lookups never need it

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False  # libc without renameat2 (glibc < 2.28, some musl builds)
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # e.g. NFS, or an old kernel
    raise OSError(err, os.strerror(err), str(b))
