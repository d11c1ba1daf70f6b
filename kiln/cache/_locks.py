"""Locks that avoid duplicate work and keep gc away from writers in flight.

Correctness never rests on these (DESIGN invariant 4): every visible file appears by atomic
rename. They do two jobs:

* ``store_lock(shared=True)`` is held by every publisher and materialiser for the duration of
  its work, and ``store_lock(shared=False)`` by gc, so gc never deletes a blob that a
  publisher has written but not yet referenced from a manifest, nor the temp files of a live
  writer. flock locks die with their process, so a SIGKILLed writer never blocks gc.
  A gate lock (gate.lock) keeps overlapping shared holders from starving gc.
* ``single_flight(key)`` makes eight builders of one key compile once: the first holds the
  lock while it builds, the others wait and then find the artifact in the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path
from typing import Iterator

from filelock import FileLock


_held = threading.local()  # per thread: lock_dir -> shared store locks this thread holds


@contextlib.contextmanager
def store_lock(lock_dir: Path, *, shared: bool) -> Iterator[None]:
    lock_dir.mkdir(parents=True, exist_ok=True)
    held: dict[str, int] = _held.__dict__.setdefault("counts", {})
    name = os.path.abspath(lock_dir)
    fd = os.open(lock_dir / "store.lock", os.O_RDWR | os.O_CREAT, 0o666)
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
        gate: int | None = os.open(lock_dir / "gate.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        gate = None  # cannot create it (read-only store): plain flock semantics
    if gate is None:
        yield
        return
    try:
        fcntl.flock(gate, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(gate)


def single_flight(lock_dir: Path, key: str, timeout: float = -1) -> FileLock:
    lock_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(lock_dir / f"build-{key}.lock"), timeout=timeout)
