"""Materialisation: recreate an artifact's directory from its manifest and the blob CAS.

One function, because it is one operation with one invariant: ``dest`` is complete or
absent (or, when replacing, the old tree or the new one) at every instant.

* Files appear in a fresh staging directory beside ``dest`` (same filesystem) and the whole
  directory is renamed into place; a replaced ``dest`` is swapped atomically where the kernel
  can exchange two paths, else moved aside first. A crash leaves at worst a hidden
  ``.<name>.kiln-…`` directory beside ``dest``, never a partial ``dest``.
* Manifest paths were validated when it was parsed (relative, normalised, no ``..``;
  DESIGN invariant 5) and the staging directory is ours alone, so no file can land outside.
* Hard links where the filesystem allows (fetch is then nearly free), else copies that are
  hashed as they are written, so a blob that changes mid-copy is caught (invariant 3).
* The store's shared lock is held while blobs are linked, so gc cannot delete a blob between
  its check and its link.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path

from ..errors import CorruptBlobError, StoreError
from ..manifests._manifest import Manifest
from ._blobs import Blobs
from ._fsutil import exchange
from ._hashmemo import hash_stream
from ._locks import store_lock
from ._progress import Progress

__all__ = ["materialize"]

# Where a hard link is impossible (another filesystem, no permission, too many links, no
# support): copy instead. Anything else is a real error.
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP)


def materialize(
    blobs: Blobs,
    lock_dir: Path,
    manifest: Manifest,
    dest: Path,
    *,
    verify: bool = True,
    replace: bool = False,
    copy: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Recreate the artifact at ``dest``: hard links on the same filesystem, else copies."""
    dest = Path(dest).absolute()
    if dest.is_symlink():
        raise StoreError(f"destination {dest} is a symbolic link; pass a real directory.")
    if dest.exists():
        if not dest.is_dir():
            raise StoreError(f"destination {dest} exists and is not a directory.")
        if any(dest.iterdir()) and not replace:
            raise StoreError(f"destination {dest} is not empty; pass --force to replace it.")
    dest.parent.mkdir(parents=True, exist_ok=True)

    staging = dest.parent / f".{dest.name}.kiln-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        # A store that was never written to has no locks/ (and may be read-only): nothing to
        # lock against, and creating the directory would be a write.
        with store_lock(lock_dir, shared=True) if lock_dir.exists() else contextlib.nullcontext():
            for f in manifest.files:
                target = staging.joinpath(*f.path.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                if verify:
                    blobs.check(f.digest, f.size)
                blob = blobs.path(f.digest)
                linked = False
                if not copy:
                    try:
                        os.link(blob, target)
                        linked = True
                    except OSError as e:
                        if e.errno not in _NO_LINK:
                            raise
                if linked:
                    if verify:
                        blobs.restamp(f.digest)  # the link changed the blob's ctime, not its bytes
                    if progress:
                        progress(f.size)
                else:
                    _copy_verified(blob, target, f.digest, progress)
        if dest.exists():
            if exchange(staging, dest):
                # One atomic swap: dest is the old tree or the new one at every instant;
                # staging now holds the old tree.
                shutil.rmtree(staging, ignore_errors=True)
            else:
                old = dest.parent / f".{dest.name}.kiln-old-{os.getpid()}-{secrets.token_hex(4)}"
                os.rename(dest, old)
                os.rename(staging, dest)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _copy_verified(src: Path, dest: Path, digest: str, progress: Progress | None) -> None:
    if "sha256:" + hash_stream(src, dest, progress)[0] != digest:
        raise CorruptBlobError(f"blob {digest} changed while it was copied out; run `kiln verify`.", digest)
