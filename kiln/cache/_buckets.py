"""The buckets the store hands out to other code, and how gc tells which are dead.

    builds/<key>-<pid>-<rand>/     a live build's working directory (+ ``<dir>.lock``)
    run/engine-<rand>/             per-process directories of engines loaded in-process
    logs/<key>-<time>-<pid>.log    logs of failed builds

Both sides of each bucket's protocol live here, side by side, because they must agree: the
function that hands a directory out and the one gc uses to decide it is abandoned. Plain
functions taking the bucket's directory; :class:`~kiln.cache._store.Store` names the
directories and calls them.

* builds/: the builder flocks ``<dir>.lock`` *before* the directory exists and holds it until
  the directory is gone, so gc — which takes the same flock without blocking — never sees a
  live build's directory unlocked. flocks die with their process, so a builder killed midway
  leaves a directory whose lock is free: abandoned.
* run/: the process that loads an engine holds a shared flock on ``<dir>/lease`` for as long
  as it lives (the engine is used until the process exits). The lease file is flocked under
  a temporary name and renamed into place, so a ``lease`` gc can see is never unlocked while
  its owner lives. gc keeps a run directory whose lease is held, whatever its age; removes one
  whose lease is free (its owner died); and judges one without a lease file (being created,
  or made by an older Kiln) by age (:data:`RUN_DIR_MAX_AGE_S`, by mtime).
* logs/: no owner to ask, so age decides (:data:`FAILED_LOG_MAX_AGE_S`, by mtime).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from ._fsutil import remove_tree, unlink_quiet

__all__ = [
    "FAILED_LOG_MAX_AGE_S",
    "RUN_DIR_MAX_AGE_S",
    "abandoned_builds",
    "build_dir",
    "keep_failed_log",
    "new_run_dir",
    "release_run_dir",
    "stale_entries",
]

LEASE = "lease"  # inside a run directory: flocked (shared) by the process using it
_leases: dict[Path, int] = {}  # run directories this process leases -> the lease's descriptor

RUN_DIR_MAX_AGE_S = 86400  # engine directories of processes that did not exit cleanly
FAILED_LOG_MAX_AGE_S = 30 * 86400  # failed builds' logs: kept a month for the user to read


@contextlib.contextmanager
def build_dir(builds_dir: Path, key: str) -> Iterator[Path]:
    """A fresh directory under ``builds_dir`` owned by this process while in use (see above)."""
    builds_dir.mkdir(parents=True, exist_ok=True)
    path = builds_dir / f"{key[:16]}-{os.getpid()}-{os.urandom(3).hex()}"
    fd = os.open(str(path) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        path.mkdir()
        yield path
    finally:
        # Directory first, lock last: while any of the directory remains, the lock is held.
        remove_tree(path)
        unlink_quiet(Path(str(path) + ".lock"))
        os.close(fd)


def abandoned_builds(builds_dir: Path) -> list[Path]:
    """Build directories whose builder is gone (its flock on ``<dir>.lock`` is free), with
    their lock files."""
    out: list[Path] = []
    if not builds_dir.is_dir():
        return out
    for d in sorted(p for p in builds_dir.iterdir() if p.is_dir()):
        lock = Path(str(d) + ".lock")
        try:
            fd = os.open(lock, os.O_RDWR)
        except FileNotFoundError:
            out.append(d)  # no lock file at all: no live builder owns it
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live build holds it
        finally:
            os.close(fd)
        out.extend([d, lock])
    return out


def keep_failed_log(logs_dir: Path, key: str, log: Path) -> Path:
    """Copy a failed build's log where the user can read it (gc removes it after 30 days)."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    saved = logs_dir / f"{key[:16]}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"
    import shutil  # only a failed build's log is copied

    shutil.copyfile(log, saved)
    return saved


def new_run_dir(run_dir_root: Path) -> Path:
    """A fresh directory for an engine loaded in this process (same filesystem: hard links).

    Leased by this process until :func:`release_run_dir` or until it exits (see above).
    """
    import tempfile  # only where an engine is loaded

    run_dir_root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="engine-", dir=run_dir_root))
    tmp = path / f".{LEASE}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.rename(tmp, path / LEASE)  # visible only once locked
    except BaseException:
        os.close(fd)
        remove_tree(path)
        raise
    _leases[path] = fd
    return path


def release_run_dir(path: Path) -> None:
    """Remove a run directory this process leased, then drop the lease (directory first)."""
    remove_tree(path)
    fd = _leases.pop(Path(path), None)
    if fd is not None:
        os.close(fd)


def _lease_state(path: Path) -> str:
    """"held", "free" (its owner died) or "none" (no lease file: judge by age)."""
    try:
        fd = os.open(path / LEASE, os.O_RDONLY)
    except OSError:
        return "none"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return "held"
    finally:
        os.close(fd)
    return "free"


def stale_entries(bucket: Path, max_age_s: float) -> list[Path]:
    """Entries of a bucket (run dirs, failed-build logs) not modified for ``max_age_s``.

    A directory with a lease (run dirs) goes by its lease instead: held, it stays whatever
    its age; free, its owner died and it goes whatever its age.
    """
    if not bucket.is_dir():
        return []
    cutoff = time.time() - max_age_s
    out = []
    for p in sorted(bucket.iterdir()):
        lease = _lease_state(p) if p.is_dir() and not p.is_symlink() else "none"
        if lease == "held":
            continue
        try:
            old = p.lstat().st_mtime < cutoff
        except FileNotFoundError:
            continue
        if lease == "free" or old:
            out.append(p)
    return out
