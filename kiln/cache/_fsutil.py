"""Small filesystem primitives the store's crash safety rests on.

Every file that becomes visible under a final name is first written in full to a temporary
name *in the same directory tree* (same filesystem), fsynced, and then renamed: rename is
atomic on POSIX filesystems, NFS included, so a reader sees the old state or the new state,
never a partial file.
"""

from __future__ import annotations

import errno
import os
import secrets
import sys
from pathlib import Path


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


def unlink_quiet(path: Path) -> None:
    """Remove a file if it is there: used for cleanup, where a missing file is the goal."""
    try:
        os.unlink(path)
    except OSError:
        pass


def temp_name(final: Path) -> Path:
    # Hidden, unique, and in the final directory, so the rename never crosses filesystems.
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write_bytes(final: Path, data: bytes, *, mode: int = 0o644, durable: bool = False) -> None:
    """Write ``data`` to ``final`` so that readers see all of it or none of it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
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
