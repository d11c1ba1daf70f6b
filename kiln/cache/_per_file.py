"""An artifact's files, several at a time: the one pool that puts, copy-outs, pushes and pulls share.

sha256 runs at ~1.4–1.8 GB/s on one core here and releases the GIL, as do reads, writes and
fsyncs, so one file per thread uses every core (docs/benchmarks.md, issue 18). The first file
that fails (or an interrupt) stops the others at their next chunk: each file's work reports
its chunks through the ``advance`` callback it is given, and that is where a stopped file
gives up. Whatever a stopped file had written is its caller's to clean up (temp files,
staging directories), exactly as after a failure of its own.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Callable, Sequence, TypeVar

from ._progress import Progress

__all__ = ["FILE_THREADS", "each_file"]

T = TypeVar("T")
R = TypeVar("R")

FILE_THREADS = max(2, min(8, os.cpu_count() or 1))  # at least 2: one file's fsync overlaps another's hashing


class _Stopped(Exception):
    """A file's work gave up because another file failed."""


def each_file(items: Sequence[T], work: Callable[[T, Callable[[int], None]], R], *,
              progress: Progress | None, threads: int | None = None, name: str = "kiln-file") -> list[R]:
    """``work(item, advance)`` for every item, up to ``threads`` (default :data:`FILE_THREADS`) at a
    time; the results in the items' order, or the first failure (the earliest, whichever file it
    was in) raised once the others stopped.

    ``work`` passes ``advance`` as the progress callback of its chunked I/O: it reports ``n``
    bytes to ``progress`` and raises inside a file whose siblings failed.
    """
    stop = threading.Event()
    failures: list[BaseException] = []  # in the order they happened, not the items' order
    failed = threading.Lock()

    def advance(n: int) -> None:  # called after every chunk
        if stop.is_set():
            raise _Stopped
        if progress is not None:
            progress(n)

    def one(item: T) -> R:
        if stop.is_set():
            raise _Stopped
        try:
            return work(item, advance)
        except _Stopped:
            raise
        except BaseException as e:
            # The first to fail is the cause; later ones may be its consequences (a sibling with
            # the same digest finds the blob this one quarantined "missing").
            with failed:
                failures.append(e)
            stop.set()
            raise

    workers = min(len(items), FILE_THREADS if threads is None else threads)
    if workers <= 1:
        return [work(item, advance) for item in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        futures: list[Future[R]] = []
        try:  # an interrupt while files are still being handed out stops the ones already running
            for item in items:
                futures.append(pool.submit(one, item))
            wait(futures, return_when=FIRST_EXCEPTION)
        finally:
            if len(futures) < len(items) or not all(f.done() and f.exception() is None for f in futures):
                stop.set()  # a failure or an interrupt: the running files stop at their next chunk
                for f in futures:
                    f.cancel()
        if failures:
            raise failures[0]
        return [f.result() for f in futures]
