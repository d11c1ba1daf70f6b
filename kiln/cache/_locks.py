"""Locks that avoid duplicate work and keep gc away from writers in flight.

Correctness never rests on these (DESIGN invariant 4): every visible file appears by atomic
rename. They do two jobs:

* ``store_lock(shared=True)`` is held by every publisher and materialiser for the duration of
  its work, and ``store_lock(shared=False)`` by gc, so gc never deletes a blob that a
  publisher has written but not yet referenced from a manifest, nor the temp files of a live
  writer. flock locks die with their process, so a SIGKILLed writer never blocks gc.
  A gate lock (gate.lock) keeps overlapping shared holders from starving gc.
* ``single_flight(key)`` makes eight builders of one key compile once: the first holds the
  lock while it builds, the others wait and then find the artifact in the store. The holder
  writes who it is (pid, host, start time, command) into the lock file, so a waiter can say
  whom it waits for — and a builder that finds the lock free says nothing about waiting.
  Where flock is not supported (some NFS mounts) the lock degrades to no lock: duplicate
  work, never a wrong result.

Readers of a read-only store (a baked image layer, a read-only mount, a store owned by
another user) need no write access: ``store_lock(shared=True, required=False)`` flocks an
existing lock file opened read-only (flock needs no write permission, so a gc run by the
store's owner still waits for the reader), and takes no lock at all where there is no lock
file and none can be created — nobody can gc such a store through this path either.

Build lock files do not accumulate: the holder unlinks ``build-<key>.lock`` *before* it
releases the flock, and every acquirer, once its flock is granted, checks that the path still
names the inode it locked (else it locked a file already released and unlinked, and retries
on the current one). So at any instant at most one process holds the lock file the path
names, which is what single-flight needs. :func:`sweep_build_locks` (gc) removes free ones
left by holders that died, under the same protocol.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from ._fsutil import unlink_quiet


_held = threading.local()  # per thread: lock_dir -> shared store locks this thread holds


# errors meaning "this lock file cannot be created or opened for writing here"
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def _open_lock(path: Path, *, required: bool) -> int | None:
    """A descriptor to flock ``path`` through, creating it (and its directory) if need be.

    Where the store cannot be written and ``required`` is false: the existing file opened
    read-only (flock works on any descriptor), else None (no lock file, and none can be made).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        if required or e.errno not in _NOT_WRITABLE:
            raise
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


@contextlib.contextmanager
def store_lock(lock_dir: Path, *, shared: bool, required: bool = True) -> Iterator[None]:
    """The store lock: shared for publishers and readers, exclusive for gc.

    ``required=False`` (readers only): where the lock file cannot be created or opened for
    writing, flock it read-only if it exists, else take no lock (see the module docstring).
    """
    held: dict[str, int] = _held.__dict__.setdefault("counts", {})
    name = os.path.abspath(lock_dir)
    fd = _open_lock(lock_dir / "store.lock", required=required or not shared)
    if fd is None:
        yield
        return
    try:
        # flock grants a new shared lock whenever another shared lock is held, so a steady
        # stream of overlapping publishers and fetches would starve gc forever. Lockers pass
        # through gate.lock first (always gate, then store: no deadlock), shared ones only for
        # the instant of taking the store lock; gc holds the gate while it waits, so lockers
        # that come later queue behind it. A thread that already holds a shared store lock
        # skips the gate: queueing behind a gc that waits for that very lock would deadlock.
        if shared and held.get(name):
            fcntl.flock(fd, fcntl.LOCK_SH)
        else:
            with _gate(lock_dir, shared):
                fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        if shared:
            held[name] = held.get(name, 0) + 1
        try:
            yield
        finally:
            if shared:
                held[name] -= 1
    finally:
        os.close(fd)  # closing releases the flock


@contextlib.contextmanager
def _gate(lock_dir: Path, shared: bool) -> Iterator[None]:
    try:
        gate = _open_lock(lock_dir / "gate.lock", required=False)
    except OSError:
        gate = None  # cannot open it at all: plain flock semantics
    if gate is None:
        yield
        return
    try:
        fcntl.flock(gate, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(gate)


# flock errors meaning "this filesystem cannot lock", not "someone holds it"
_NO_LOCKING = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
_MAX_HOLDER_BYTES = 4096


class SingleFlight:
    """An exclusive flock on ``locks/build-<key>.lock`` whose holder says who it is.

    ``with lock:`` waits silently; ``with lock.held(on_wait=f):`` calls ``f(description)``
    once, before blocking, only when another process (or thread) holds the lock. Each
    acquisition opens its own descriptor, so threads of one process exclude each other too.
    """

    def __init__(self, path: Path, timeout: float = -1) -> None:
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None

    @property
    def is_locked(self) -> bool:
        return self._fd is not None

    def acquire(self, on_wait: Callable[[str], None] | None = None) -> None:
        if self._fd is not None:
            raise RuntimeError(f"{self.path} is already held by this lock object")
        deadline = None if self.timeout < 0 else time.monotonic() + self.timeout
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                if not self._try_lock(fd):
                    if on_wait is not None:
                        on_wait(describe_holder(_read_holder(fd)))
                        on_wait = None  # said once, even if the lock file changes under us
                    self._wait(fd, deadline)
                if not _still_named(fd, self.path):
                    os.close(fd)  # locked a file its holder released and unlinked: take the current one
                    continue
                _write_holder(fd)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            return

    def _try_lock(self, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in _NO_LOCKING:
                return True  # no locking here: proceed (DESIGN invariant 4: correctness does not need it)
            raise

    def _wait(self, fd: int, deadline: float | None) -> None:
        if deadline is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        while not self._try_lock(fd):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{self.path} is still held ({describe_holder(_read_holder(fd))}) "
                                   f"after {self.timeout:g} s")
            time.sleep(0.05)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        # Unlink while still holding the flock (lock files must not accumulate): a waiter
        # granted this inode afterwards sees the path gone and retries (see acquire).
        if _still_named(fd, self.path):
            unlink_quiet(self.path)
        os.close(fd)  # closing releases the flock

    @contextlib.contextmanager
    def held(self, on_wait: Callable[[str], None] | None = None) -> Iterator["SingleFlight"]:
        self.acquire(on_wait)
        try:
            yield self
        finally:
            self.release()

    def __enter__(self) -> "SingleFlight":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _still_named(fd: int, path: Path) -> bool:
    """Does ``path`` still name the file open on ``fd``?"""
    try:
        st, now = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino)


def _write_holder(fd: int) -> None:
    """Who holds the lock, for waiters' messages. Advisory: nothing depends on it being there."""
    info = {
        "pid": os.getpid(),
        "host": os.uname().nodename,
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }  # no command line: it may carry a remote URL with credentials, and lock files are world-readable
    data = json.dumps(info, sort_keys=True).encode()
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    except OSError:
        pass


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        data = json.loads(os.pread(fd, _MAX_HOLDER_BYTES, 0))
    except (OSError, ValueError):
        return None  # not written yet, or being rewritten
    return data if isinstance(data, dict) else None


def describe_holder(info: dict[str, Any] | None) -> str:
    """``held by pid 4242 on build-7 since 2026-01-01T10:00:00Z``."""
    if not info or "pid" not in info:
        return "held by another process"

    def clean(value: Any) -> str:  # the file is anyone's to write: print no control characters
        return "".join(c for c in str(value)[:100] if c.isprintable()) or "?"

    return f"held by pid {clean(info.get('pid'))} on {clean(info.get('host'))} since {clean(info.get('started'))}"


def single_flight(lock_dir: Path, key: str, timeout: float = -1) -> SingleFlight:
    lock_dir.mkdir(parents=True, exist_ok=True)
    return SingleFlight(lock_dir / f"build-{key}.lock", timeout=timeout)


def sweep_build_locks(lock_dir: Path) -> list[Path]:
    """Remove the free ``build-*.lock`` files of holders that died; return what was removed.

    Each is removed as a holder would remove it: flocked (without waiting: a held one is
    live), checked to be still the file its path names, unlinked, then released.
    """
    removed: list[Path] = []
    if not lock_dir.is_dir():
        return removed
    for path in sorted(lock_dir.glob("build-*.lock")):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue  # gone already, or not ours to remove
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _still_named(fd, path):
                os.unlink(path)
                removed.append(path)
        except OSError:
            pass  # held by a live builder (or no locking here: leave it)
        finally:
            os.close(fd)
    return removed
