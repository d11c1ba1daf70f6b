"""A filesystem remote: a directory, typically an NFS or other shared mount.

Atomicity (the :class:`~kiln.cache.remotes.Remote` contract): every object is written in
full to a hidden temp file in its final directory (``.<name>.tmp-<pid>-<rand>``), fsynced,
then renamed — rename is atomic on POSIX filesystems, NFS included — and the directory is
fsynced, so a reader sees the whole object or none. A writer killed midway leaves only a
hidden temp file: listings skip hidden names, and :meth:`FileRemote.cleanup_partial_uploads`
(run by remote gc, after its grace period) removes them. No locks: two writers of one object
write identical bytes, and either rename wins whole.

Reads never block on, nor read from, anything but a regular file: an object is opened with
O_NONBLOCK (a FIFO opens at once instead of waiting for a writer) and checked with fstat on
the descriptor before a byte is read; a FIFO, device, socket or directory is a RemoteError
that names it, and listings skip it. Symlinks are followed only to regular files. A download
copies at most the declared size plus one byte (to see that the object is longer) and
removes its partial file on every failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat as st_
from pathlib import Path
from typing import BinaryIO, Iterator

from ...errors import RemoteError
from .._fsutil import WriteBehind, atomic_write_bytes, fsync_dir, temp_name, unlink_quiet
from .._progress import Progress
from ._base import ObjectInfo, Remote
from ._bounded import local_writes

COPY_CHUNK = 8 << 20

__all__ = ["FileRemote"]


class FileRemote(Remote):
    """A directory, typically an NFS or other shared mount."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url

    def origin(self) -> str:
        return "file://" + str(self.root.resolve())  # `..` and links resolved: one name per place

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def _not_regular(self, key: str, mode: int) -> RemoteError:
        return self.error(
            f"object {key} on remote {self.describe()} is {_kind(mode)}, not a regular file; remove it."
        )

    def _open(self, key: str) -> int | None:
        """A read descriptor of the object's regular file, or None if it is absent.

        O_NONBLOCK so that opening a FIFO returns at once (a blocking open waits for a writer
        forever); fstat on the descriptor, not the path, so what is checked is what is read.
        """
        path = self._path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as e:
            self.stat(key)  # a socket (ENXIO) or the like: name what it is, if it is not a file
            raise self.error(f"cannot read object {key} on remote {self.describe()}: {e.strerror}") from None
        try:
            mode = os.fstat(fd).st_mode
            if not st_.S_ISREG(mode):
                raise self._not_regular(key, mode)
            os.set_blocking(fd, True)  # a regular file: plain blocking reads from here on
        except BaseException:
            os.close(fd)
            raise
        return fd

    def get(self, key: str, max_size: int) -> bytes | None:
        fd = self._open(key)
        if fd is None:
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                return f.read(max_size + 1)
        except OSError as e:
            raise self.error(f"cannot read object {key} on remote {self.describe()}: {e.strerror}") from None

    def put(self, key: str, data: bytes) -> None:
        try:
            atomic_write_bytes(self._path(key), data, durable=True)
        except OSError as e:
            raise self.error(f"cannot write {self._path(key)} on remote {self.describe()}: {e.strerror}") from None

    def stat(self, key: str) -> int | None:
        # stat, not open: a path's metadata never blocks, whatever kind of file it is.
        try:
            info = self._path(key).stat()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self.error(f"cannot check object {key} on remote {self.describe()}: {e.strerror}") from None
        if not st_.S_ISREG(info.st_mode):
            raise self._not_regular(key, info.st_mode)
        return info.st_size

    def upload(self, path: Path, key: str, progress: Progress | None = None) -> None:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(final)
        try:
            with open(path, "rb") as fin:
                _copy(fin, tmp, None, progress, digest=False)  # the pusher has the digest already
            os.replace(tmp, final)
        except OSError as e:
            unlink_quiet(tmp)
            raise self.error(f"cannot write {final} on remote {self.describe()}: {e.strerror}") from None
        except BaseException:
            unlink_quiet(tmp)
            raise
        fsync_dir(final.parent)

    def download(self, key: str, dest: Path, size: int, progress: Progress | None = None) -> tuple[str, int] | None:
        try:
            fd = self._open(key)
            if fd is None:
                raise self.error(f"object {key} is missing from remote {self.describe()}")
            with os.fdopen(fd, "rb") as fin:
                actual = os.fstat(fin.fileno()).st_size
                if actual != size:
                    raise self.size_error(key, size, actual)
                # The cap holds even if the file grows while it is copied.
                copied, digest = _copy(fin, dest, size + 1, progress, local_dest=True)
            if copied != size:
                raise self.size_error(key, size, f"more than {size}" if copied > size else copied)
            return (digest, copied) if digest else None
        except OSError as e:
            unlink_quiet(dest)
            raise self.error(f"cannot download object {key} from remote {self.describe()}: {e.strerror}") from None
        except BaseException:
            unlink_quiet(dest)
            raise

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in sorted(files):
                if name.startswith("."):
                    continue  # temp files of writers in flight
                p = Path(dirpath) / name
                try:
                    info = p.stat()  # follows a symlink; never opens (a FIFO would block)
                except OSError:
                    continue  # gone since the walk, or a dangling link: not an object
                if not st_.S_ISREG(info.st_mode):
                    continue  # FIFOs, devices, sockets: never objects
                yield ObjectInfo(p.relative_to(self.root).as_posix(), info.st_size, info.st_mtime)

    def delete(self, key: str) -> None:
        unlink_quiet(self._path(key))

    def cleanup_partial_uploads(self, older_than_s: float) -> int:
        import time

        cutoff, n = time.time() - older_than_s, 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                p = Path(dirpath) / name
                if name.startswith(".") and ".tmp-" in name:
                    try:
                        if p.lstat().st_mtime < cutoff:
                            p.unlink()
                            n += 1
                    except FileNotFoundError:
                        pass
        return n


def _kind(mode: int) -> str:
    kinds = ((st_.S_ISFIFO, "a FIFO"), (st_.S_ISCHR, "a character device"), (st_.S_ISBLK, "a block device"),
             (st_.S_ISSOCK, "a socket"), (st_.S_ISDIR, "a directory"))
    return next((name for test, name in kinds if test(mode)), "not a file")


def _copy(fin: BinaryIO, dest: Path, limit: int | None, progress: Progress | None,
          digest: bool = True, local_dest: bool = False) -> tuple[int, str | None]:
    """Copy ``fin`` into a new ``dest`` (at most ``limit`` bytes), fsynced; returns the bytes copied
    and, with ``digest``, their ``sha256:<hex>``, hashed on the way (a pull then verifies without
    a second read). ``local_dest``: ``dest`` is a download's file in the local store, so failing
    to write it is a LocalWriteError (the store's problem), not the remote's."""
    writes = (lambda: local_writes(dest)) if local_dest else contextlib.nullcontext
    copied = 0
    h = hashlib.sha256() if digest else None
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    with writes():
        fout = open(dest, "wb", buffering=0)
    with fout:
        out = WriteBehind(fout)
        while limit is None or copied < limit:
            n = fin.readinto(view[: COPY_CHUNK if limit is None else min(COPY_CHUNK, limit - copied)])
            if not n:
                break
            if h is not None:
                h.update(view[:n])
            with writes():
                out.write(view[:n])
            copied += n
            if progress:
                progress(n)
        with writes():
            os.fsync(fout.fileno())
    return copied, None if h is None else "sha256:" + h.hexdigest()
