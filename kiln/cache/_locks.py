"""Locks that avoid duplicate work and keep gc away from writers in flight.

Correctness never rests on these (DESIGN invariant 4): every visible file appears by atomic
rename. They do two jobs:

* ``store_lock(shared=True)`` is held by every publisher and materialiser for the duration of
  its work, and ``store_lock(shared=False)`` by gc, so gc never deletes a blob that a
  publisher has written but not yet referenced from a manifest, nor the temp files of a live
  writer. flock locks die with their process, so a SIGKILLed writer never blocks gc.
* ``single_flight(key)`` makes eight builders of one key compile once: the first holds the
  lock while it builds, the others wait and then find the artifact in the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from filelock import FileLock


@contextlib.contextmanager
def store_lock(lock_dir: Path, *, shared: bool) -> Iterator[None]:
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / "store.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def single_flight(lock_dir: Path, key: str, timeout: float = -1) -> FileLock:
    lock_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(lock_dir / f"build-{key}.lock"), timeout=timeout)
