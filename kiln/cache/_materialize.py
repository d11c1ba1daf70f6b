"""Materialisation: recreate an artifact's directory from its manifest and the blob CAS.

One invariant above all: ``dest`` is complete or absent (or, when replacing, the old tree or
the new one) at every instant.

* Files appear in a fresh staging directory beside ``dest`` (same filesystem) and the whole
  directory is renamed into place; a replaced ``dest`` is swapped atomically where the kernel
  can exchange two paths, else moved aside first. A crash leaves at worst a hidden
  ``.<name>.kiln-<pid>-<host>-<rand>`` directory beside ``dest``, never a partial ``dest``;
  the next materialisation into the same parent removes such leftovers once their owner is
  dead (same host and pid namespace, no such process, and the staging directory's flock —
  held by its owner for as long as it works in it — free). A live owner's are never touched.
* Manifest paths were validated when it was parsed (relative, normalised, no ``..``;
  DESIGN invariant 5) and the staging directory is ours alone, so no file can land outside.
* A write into a materialised file must never reach the store. Serving containers run as
  root, and root ignores the blobs' mode 0444: through a hard link, one ``echo >
  DEST/config.json`` corrupts every artifact sharing that blob. So files are *clones* by
  default — a reflink (FICLONE: copy-on-write, instant, no extra space) where the filesystem
  has them, else a copy hashed as it is written (a blob that changes mid-copy is caught,
  invariant 3). Hard links only when the caller asks (``link=True``: Kiln's own build and run
  directories under the store, or ``--link`` with its risk stated).
* A destination that overlaps the store (inside it, or containing it, symlinks resolved) is
  refused before anything is touched: replacing it would delete the store. Kiln's own
  buckets for build inputs and loaded engines are the only exception.
* The store's shared lock is held while blobs are read, so gc cannot delete a blob between
  its check and its clone or link (a reader's lock: best effort on a read-only store, see
  :func:`~kiln.cache._locks.store_lock`).
* Generated files of a deployment layout (serving.properties, …) are written from memory,
  not stored as blobs first: materialising needs no write access to the store.

:func:`holds` answers "does ``dest`` already hold exactly this artifact?" so that a serving
container's second `kiln ensure` exits 0 without touching it: the file list and sizes must
match the manifest, then either every file's stat signature equals the one recorded when Kiln
materialised it (the fast path: any write changes a file's ctime), or every file hashes to its
digest (the exact path, after which the record is written again).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from contextlib import AbstractContextManager
from typing import Callable, Mapping

from ..errors import CorruptBlobError, StoreError
from ..manifests._manifest import FileEntry, Manifest
from ._blobs import Blobs
from ._fsutil import atomic_write_bytes, exchange, remove_tree
from ._hashmemo import hash_stream, stat_signature
from ._per_file import each_file
from ._progress import Progress

__all__ = ["materialize", "holds", "check_outside_store", "sweep_staging"]

# Where a hard link is impossible (another filesystem, no permission, too many links, no
# support): clone or copy instead. Anything else is a real error.
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES, errno.ENOTSUP)
# FICLONE (linux/fs.h: _IOW(0x94, 9, int)); errors meaning "this filesystem cannot clone".
_FICLONE = 0x40049409
_NO_CLONE = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.EBADF, errno.ENOSYS, errno.EPERM)


def check_outside_store(dest: Path, root: Path, allowed: tuple[Path, ...] = ()) -> None:
    """Refuse a ``dest`` inside the store or containing it (symlinks resolved), unless it lies
    inside one of the ``allowed`` buckets (Kiln's own build and run directories)."""
    real_dest, real_root = dest.resolve(), root.resolve()
    if any(_within(real_dest, a.resolve()) for a in allowed):
        return
    if _within(real_dest, real_root) or _within(real_root, real_dest):
        raise StoreError(
            f"destination {dest} overlaps the Kiln store at {root} (KILN_HOME): materialising there "
            "could delete or corrupt the store; choose a --dest outside it."
        )


def _within(path: Path, parent: Path) -> bool:
    return path == parent or parent in path.parents


def materialize(
    blobs: Blobs,
    reader_lock: Callable[[], AbstractContextManager[None]],
    manifest: Manifest,
    dest: Path,
    *,
    verify: bool = True,
    replace: bool = False,
    link: bool = False,
    progress: Progress | None = None,
    generated: Mapping[str, bytes] | None = None,
) -> Path:
    """Recreate the artifact at ``dest``: clones (or hashed copies) by default, hard links with ``link``.

    ``reader_lock()`` is the store's shared lock for readers (held while blobs are read);
    ``generated`` maps a digest to the bytes of a file the manifest lists that is not a blob
    (a layout's generated files).
    """
    dest = Path(dest).absolute()
    if dest.is_symlink():
        raise StoreError(f"destination {dest} is a symbolic link; pass a real directory.")
    if dest.exists():
        if not dest.is_dir():
            raise StoreError(f"destination {dest} exists and is not a directory.")
        if any(dest.iterdir()) and not replace:
            raise StoreError(f"destination {dest} is not empty; pass --force to replace it.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_staging(dest.parent)  # what killed materialisations left here

    staging = dest.parent / f".{dest.name}.kiln-{_owner()}-{os.urandom(4).hex()}"
    staging.mkdir()
    owned = _hold(staging)  # flocked while we work in it: a sweeper never takes it
    try:
        for parent in sorted({staging.joinpath(*f.path.split("/")).parent for f in manifest.files}):
            parent.mkdir(parents=True, exist_ok=True)

        def place(f: FileEntry, advance: Callable[[int], None]) -> None:
            target = staging.joinpath(*f.path.split("/"))
            data = (generated or {}).get(f.digest)
            if data is not None:
                _write_generated(target, data, advance)
                return
            if verify:  # a re-hash counts no progress (the copy below does) but stops with its siblings
                blobs.check(f.digest, f.size, progress=lambda _n: advance(0))
            _place(blobs, f.digest, target, link=link, verify=verify, progress=advance, size=f.size)

        with reader_lock():
            # Copies (and re-hashes of changed blobs) use every core, one file per thread. Links are
            # a system call each, cheaper than starting threads; whether a clone works is known only
            # per file, so clones go through the pool with the copies.
            each_file(manifest.files, place, progress=progress, threads=1 if link else None, name="kiln-copy")
        if dest.exists():
            if exchange(staging, dest):
                # One atomic swap: dest is the old tree or the new one at every instant;
                # staging now holds the old tree.
                remove_tree(staging)
            else:
                old = dest.parent / f".{dest.name}.kiln-old-{_owner()}-{os.urandom(4).hex()}"
                os.rename(dest, old)
                os.rename(staging, dest)
                remove_tree(old)
        else:
            os.rename(staging, dest)
    except BaseException:
        remove_tree(staging)
        raise
    finally:
        if owned is not None:
            os.close(owned)
    return dest


def _write_generated(target: Path, data: bytes, progress: Progress | None) -> None:
    with open(target, "wb") as fh:
        fh.write(data)
    os.chmod(target, 0o644)
    if progress:
        progress(len(data))


# ---------------------------------------------------------------------- staging leftovers

# .<name>.kiln-[old-]<pid>-<host tag>-<random>: who made it, to tell a dead owner's leftovers
_STAGING = re.compile(r"^\..+\.kiln-(?:old-)?(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-[0-9a-f]{8}$")


def _host_tag() -> str:
    """This host and pid namespace: a pid means the same process only within both."""
    try:
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        ns = ""
    return hashlib.sha256(f"{os.uname().nodename}\0{ns}".encode()).hexdigest()[:8]


def _owner() -> str:
    return f"{os.getpid()}-{_host_tag()}"


def _hold(path: Path) -> int | None:
    """Flock a directory we own for as long as we work in it (None where flock is not supported)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, but another user's
    return True


def sweep_staging(parent: Path) -> list[Path]:
    """Remove the staging leftovers of dead owners in ``parent``; return what was removed.

    Only directories named by :func:`materialize`, made on this host and pid namespace by a
    process that no longer exists, and whose flock is free: never a live owner's.
    """
    removed: list[Path] = []
    try:
        names = [n for n in os.listdir(parent) if n.startswith(".") and ".kiln-" in n]
    except OSError:
        return removed
    me, host = os.getpid(), _host_tag()
    for name in names:
        m = _STAGING.match(name)
        if m is None or m["host"] != host or int(m["pid"]) == me or _pid_alive(int(m["pid"])):
            continue
        path = parent / name
        if path.is_symlink() or not path.is_dir():
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # held: someone works in it after all
        except OSError:
            pass  # no flock on this filesystem: the dead pid is enough
        try:
            remove_tree(path)
        finally:
            os.close(fd)
        if not path.exists():
            removed.append(path)
    return removed


def _place(blobs: Blobs, digest: str, target: Path, *, link: bool, verify: bool, progress: Progress | None,
           size: int) -> None:
    blob = blobs.path(digest)
    if link:
        try:
            os.link(blob, target)
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
        else:
            if verify:
                blobs.restamp(digest)  # the link changed the blob's ctime, not its bytes
            if progress:
                progress(size)
            return
    if _clone(blob, target):
        os.chmod(target, 0o644)  # an independent copy-on-write file: the deployment's own
        if progress:
            progress(size)
        return
    _copy_verified(blob, target, digest, progress)


def _clone(src: Path, dest: Path) -> bool:
    """Reflink ``src`` to ``dest`` (copy-on-write: later writes to either never reach the other)."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
        except OSError as e:
            if e.errno in _NO_CLONE:
                return False
            raise
    return True


def _copy_verified(src: Path, dest: Path, digest: str, progress: Progress | None) -> None:
    if "sha256:" + hash_stream(src, dest, progress)[0] != digest:
        raise CorruptBlobError(f"blob {digest} changed while it was copied out; run `kiln verify`.", digest)


# ---------------------------------------------------------------------- already in place


def record_path(records_dir: Path, dest: Path) -> Path:
    """Where the store remembers what it materialised at ``dest`` (by its resolved path)."""
    return records_dir / (hashlib.sha256(str(Path(dest).resolve()).encode()).hexdigest() + ".json")


def remember(records_dir: Path, manifest: Manifest, manifest_digest: str, dest: Path) -> None:
    """Record the stat signature of every file materialised at ``dest`` (best effort)."""
    try:
        sigs = {f.path: stat_signature(os.stat(dest.joinpath(*f.path.split("/")))) for f in manifest.files}
        records_dir.mkdir(parents=True, exist_ok=True)
        data = {"dest": str(Path(dest).resolve()), "manifest": manifest_digest, "files": sigs}
        atomic_write_bytes(record_path(records_dir, dest), json.dumps(data, sort_keys=True).encode())
    except OSError:
        pass  # a read-only store: the next check hashes the files instead


def holds(records_dir: Path, manifest: Manifest, manifest_digest: str, dest: Path,
          ignore: frozenset[str] = frozenset()) -> tuple[bool, str]:
    """(True, "") when ``dest`` holds exactly this artifact, else (False, the first difference).

    ``ignore``: top-level files of ``dest`` that may be there or not (the raw layout's
    ``model.sig``, which the caller keeps current itself)."""
    dest = Path(dest)
    want = {f.path: f for f in manifest.files}
    have: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(dest).as_posix()
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                return False, f"{rel} is a symbolic link"
            if name in filenames:
                if rel in ignore:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    return False, f"{rel} is not a regular file"
                have[rel] = st
    extra = sorted(set(have) - set(want))
    missing = sorted(set(want) - set(have))
    if extra or missing:
        return False, (f"{extra[0]} is not part of the artifact" if extra else f"{missing[0]} is missing")
    for rel, f in want.items():
        if have[rel].st_size != f.size:
            return False, f"{rel} has {have[rel].st_size} bytes, the artifact's has {f.size}"
    try:
        record = json.loads(record_path(records_dir, dest).read_bytes())
    except (OSError, ValueError):
        record = {}
    if record.get("manifest") == manifest_digest and record.get("files") == {
            rel: stat_signature(st) for rel, st in have.items()}:
        return True, ""
    for rel, f in want.items():
        if "sha256:" + hash_stream(dest.joinpath(*rel.split("/")))[0] != f.digest:
            return False, f"{rel} was changed since it was materialised"
    remember(records_dir, manifest, manifest_digest, dest)
    return True, ""


def stale_records(records_dir: Path) -> list[Path]:
    """Records of destinations that no longer exist (gc removes them)."""
    out = []
    if not records_dir.is_dir():
        return out
    for p in sorted(records_dir.glob("*.json")):
        try:
            dest = json.loads(p.read_bytes()).get("dest")
        except (OSError, ValueError, AttributeError):
            dest = None
        if not dest or not Path(dest).exists():
            out.append(p)
    return out
