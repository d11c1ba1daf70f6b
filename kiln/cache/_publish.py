"""Publish: store an artifact directory's files and make it visible under its build key.

The order is the whole of DESIGN invariant 2, so it has this one home: every file's blob,
then the build record and the manifest (blobs too), then an fsync of every blob directory
touched, then the index entry, last, each by atomic rename. A reader that finds the entry
therefore finds its manifest and every blob; a publish killed at any point leaves at worst
unreferenced blobs and temp files, which gc removes. All of it runs under the store's shared
lock (``writer_lock``), so gc cannot delete a blob written here before the entry that
references it exists.

Only regular files are published: a link in an artifact could point anywhere when the
artifact is materialised elsewhere, and an artifact with no files is a failed build, which
is never published.

A full disk at any step (ENOSPC, EDQUOT, EFBIG) is one StoreError naming the path being
written, the store and the fix (:func:`~kiln.cache._fsutil.store_writes`, used by every blob
and entry write); the partial temp file is gone, and the blobs written before it are
unreferenced, for gc. Nothing is visible: the entry was not written.

A function over the blob CAS and the index files, which the store hands in.
"""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import StoreError
from ..manifests._index import IndexEntry
from ..manifests._manifest import CONFIG_MEDIA_TYPE, Descriptor, FileEntry, Manifest
from ..manifests._record import utc_now
from ._blobs import Blobs
from ._entries import IndexFiles
from ._fsutil import fsync_dir
from ._per_file import each_file
from ._progress import Progress

__all__ = ["artifact_files", "publish"]


def publish(
    blobs: Blobs,
    index: IndexFiles,
    writer_lock: Callable[[], AbstractContextManager[Any]],
    src_dir: Path,
    *,
    key: str,
    spec: Mapping[str, Any],
    model: Mapping[str, Any],
    toolchain: Mapping[str, str],
    record: Mapping[str, Any],
    move: bool = False,
    progress: Progress | None = None,
    before_index: Callable[[], None] | None = None,
) -> IndexEntry:
    """Store every file under ``src_dir`` and make the artifact visible under ``key``."""
    src_dir = Path(src_dir)
    paths = artifact_files(src_dir)
    created = utc_now()
    with writer_lock():
        files = _put_files(blobs, paths, move=move, progress=progress)
        record_bytes = json.dumps(dict(record), sort_keys=True, indent=1).encode()
        cdigest, csize = blobs.put_bytes(record_bytes)
        manifest = Manifest(
            Descriptor(CONFIG_MEDIA_TYPE, cdigest, csize),
            tuple(files),
            {"org.opencontainers.image.created": created, "dev.kiln.key": key},
        )
        mdigest, _ = blobs.put_bytes(manifest.to_bytes())
        for d in {blobs.path(f.digest).parent for f in files}:
            fsync_dir(d)
        entry = IndexEntry(
            key=key,
            manifest=mdigest,
            spec=dict(spec),
            model=dict(model),
            toolchain=dict(toolchain),
            size=manifest.total_size,
            created=created,
            files=len(files),
        )
        if before_index is not None:
            before_index()  # test hook: the moment between manifest and index entry
        index.write(entry)
    return entry


def _put_files(blobs: Blobs, paths: list[tuple[str, Path]], *, move: bool,
               progress: Progress | None) -> list[FileEntry]:
    """Every file's blob, several files at a time (:func:`~kiln.cache._per_file.each_file`), in
    path order. On a failure the blobs already stored are unreferenced, for gc, and no temp file
    stays."""

    def put(item: tuple[str, Path], advance: Callable[[int], None]) -> FileEntry:
        rel, path = item
        digest, size = blobs.put_file(path, move=move, progress=advance)
        return FileEntry(rel, digest, size)

    return each_file(paths, put, progress=progress, name="kiln-put")


def artifact_files(src_dir: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) for every regular file; links and specials are refused."""
    if not src_dir.is_dir():
        raise StoreError(f"{src_dir} is not a directory; pass the artifact directory to publish.")
    out = []
    for dirpath, dirnames, filenames in os.walk(src_dir):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            if p.is_symlink():
                raise StoreError(
                    f"{p} is a symbolic link; artifacts hold regular files only (copy the target in)."
                )
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if not p.is_file():
                raise StoreError(f"{p} is not a regular file; artifacts hold regular files only.")
            out.append((p.relative_to(src_dir).as_posix(), p))
    if not out:
        raise StoreError(f"{src_dir} holds no files: an empty artifact is never published.")
    return out
