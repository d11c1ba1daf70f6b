"""A filesystem remote: a directory, typically an NFS or other shared mount.

Atomicity (the :class:`~kiln.cache.remotes.Remote` contract): every object is written in
full to a hidden temp file in its final directory (``.<name>.tmp-<pid>-<rand>``), fsynced,
then renamed — rename is atomic on POSIX filesystems, NFS included — and the directory is
fsynced, so a reader sees the whole object or none. A writer killed midway leaves only a
hidden temp file: listings skip hidden names, and :meth:`FileRemote.cleanup_partial_uploads`
(run by remote gc, after its grace period) removes them. No locks: two writers of one object
write identical bytes, and either rename wins whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from ...errors import RemoteError
from .._fsutil import atomic_write_bytes, fsync_dir, temp_name, unlink_quiet
from .._progress import Progress
from ._base import ObjectInfo, Remote

__all__ = ["FileRemote"]


class FileRemote(Remote):
    """A directory, typically an NFS or other shared mount."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def get(self, key: str, max_size: int) -> bytes | None:
        try:
            with open(self._path(key), "rb") as f:
                return f.read(max_size + 1)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise RemoteError(f"cannot read {self._path(key)} on remote {self.url}: {e.strerror}") from None

    def put(self, key: str, data: bytes) -> None:
        try:
            atomic_write_bytes(self._path(key), data, durable=True)
        except OSError as e:
            raise RemoteError(f"cannot write {self._path(key)} on remote {self.url}: {e.strerror}") from None

    def stat(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def upload(self, path: Path, key: str, progress: Progress | None = None) -> None:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(final)
        try:
            _copy(path, tmp, progress)
            os.replace(tmp, final)
        except OSError as e:
            unlink_quiet(tmp)
            raise RemoteError(f"cannot write {final} on remote {self.url}: {e.strerror}") from None
        except BaseException:
            unlink_quiet(tmp)
            raise
        fsync_dir(final.parent)

    def download(self, key: str, dest: Path, progress: Progress | None = None) -> None:
        try:
            _copy(self._path(key), dest, progress)
        except FileNotFoundError:
            raise RemoteError(f"object {key} is missing from remote {self.url}") from None

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
                    st = p.stat()
                except FileNotFoundError:
                    continue
                yield ObjectInfo(p.relative_to(self.root).as_posix(), st.st_size, st.st_mtime)

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
                        if p.stat().st_mtime < cutoff:
                            p.unlink()
                            n += 1
                    except FileNotFoundError:
                        pass
        return n


def _copy(src: Path, dest: Path, progress: Progress | None) -> None:
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while True:
            chunk = fin.read(8 << 20)
            if not chunk:
                break
            fout.write(chunk)
            if progress:
                progress(len(chunk))
        fout.flush()
        os.fsync(fout.fileno())
