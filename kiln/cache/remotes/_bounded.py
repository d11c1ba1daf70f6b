"""Waits with a total deadline, for remote I/O whose client library bounds only each recv.

botocore's ``read_timeout`` bounds one socket read, not a request: a server that trickles a
byte every few seconds, in the response headers or the body, keeps a request alive forever.
Finding and closing the socket of an in-flight botocore request needs its private
internals, and reading the body in chunks against a clock bounds neither the wait for the
headers nor one slow chunk. So the blocking work runs on a daemon thread and the caller
waits for it with a timeout: that bounds *every* wait (DNS, connect, headers, body, retries
and their backoff) from the caller's side. An abandoned worker is a daemon (it never holds
the process at exit) and checks ``cancel`` between chunks, so it stops at its next chunk;
a worker stuck in one recv is released when its socket's own read timeout fires.

Invariant for writers: bytes reach a download's file only through :class:`Sink`, which
refuses every write once the caller has closed it, so a worker that outlives the deadline
never writes to the file, nor to a descriptor number the process has since reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

__all__ = ["Cancelled", "DeadlineExceeded", "FileSlice", "LocalWriteError", "Sink", "local_writes", "run_bounded",
           "run_parallel"]

T = TypeVar("T")

READ_BACK_CHUNK = 8 << 20  # a region hashed after the bytes before it arrived is read back in these


class DeadlineExceeded(Exception):
    """The work did not finish within its deadline (the caller words the user's message)."""


class Cancelled(Exception):
    """Raised inside a worker whose work was abandoned (deadline, or another part failed)."""


class LocalWriteError(Exception):
    """Writing a download's own file failed (a full disk, a file-size limit, an I/O error).

    That is the local store's problem, not the remote's: every remote lets it through unchanged
    (it is not an OSError, which they turn into "cannot reach" or "cannot download" errors), and
    pull turns it into the store's one-line error with the fix (``cache/_sync.py``)."""

    def __init__(self, error: OSError, path: Path) -> None:
        super().__init__(f"cannot write {path}: {error.strerror or error}")
        self.error, self.path = error, path


@contextlib.contextmanager
def local_writes(path: Path) -> Iterator[None]:
    """An OSError inside (writing or reading back ``path``, a download's file) is a :class:`LocalWriteError`."""
    try:
        yield
    except OSError as e:
        raise LocalWriteError(e, path) from None


def run_bounded(fn: Callable[[], T], seconds: float) -> T:
    """``fn()``'s result or exception, or :class:`DeadlineExceeded` once ``seconds`` have passed."""
    done = threading.Event()
    box: list[tuple[bool, object]] = []

    def work() -> None:
        try:
            box.append((True, fn()))
        except BaseException as e:  # handed to the caller, re-raised there
            box.append((False, e))
        finally:
            done.set()

    threading.Thread(target=work, name="kiln-remote-request", daemon=True).start()
    if not done.wait(max(seconds, 0.0)):
        raise DeadlineExceeded
    ok, value = box[0]
    if ok:
        return value  # type: ignore[return-value]
    raise value  # type: ignore[misc]


def run_parallel(tasks: Sequence[Callable[[threading.Event], None]], seconds: float, concurrency: int) -> None:
    """Run ``tasks`` (each given the shared cancel event) on up to ``concurrency`` daemon threads.

    Returns when all succeeded; raises the first task's exception as soon as one fails, or
    :class:`DeadlineExceeded` after ``seconds``. Either way ``cancel`` is set first, so the
    other tasks stop at their next check and no new one starts.
    """
    cancel, stop, lock = threading.Event(), threading.Event(), threading.Lock()
    pending = list(reversed(tasks))
    errors: list[BaseException] = []
    threads = max(1, min(concurrency, len(tasks)))
    running = [threads]

    def worker() -> None:
        try:
            while not cancel.is_set():
                with lock:
                    if not pending:
                        return
                    task = pending.pop()
                task(cancel)
        except BaseException as e:
            with lock:
                errors.append(e)
            cancel.set()
            stop.set()
        finally:
            with lock:
                running[0] -= 1
                if running[0] == 0:
                    stop.set()

    for _ in range(threads):
        threading.Thread(target=worker, name="kiln-remote-part", daemon=True).start()
    finished = stop.wait(max(seconds, 0.0))
    cancel.set()
    with lock:
        first = next((e for e in errors if not isinstance(e, Cancelled)), errors[0] if errors else None)
    if first is not None:
        raise first
    if not finished:
        raise DeadlineExceeded


class Sink:
    """A download's open file, written at offsets from several threads, closed by its owner.

    Every write holds the lock and checks that the file is still open: once :meth:`close`
    returns, no late worker writes a byte (it gets :class:`Cancelled`).

    It also hashes what it writes, in file order, as the bytes arrive (:meth:`sha256`), so a
    pull verifies a blob without reading it again. Bytes written at the hashed length go into
    the hash at once (one stream: every byte); bytes written further on wait until the bytes
    before them are in, then are read back from the page cache (parallel ranged parts).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        with local_writes(path):
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self._lock = threading.Lock()
        self._hash: Any = hashlib.sha256()  # None once a region was written twice
        self._hashed = 0  # bytes [0, _hashed) of the file are in the hash
        self._ahead: dict[int, int] = {}  # written but not yet hashed: start -> end

    def write_at(self, offset: int, data: bytes) -> None:
        with self._lock:
            if self._fd is None:
                raise Cancelled
            view = memoryview(data)
            at = offset
            with local_writes(self.path):
                while view:
                    n = os.pwrite(self._fd, view, at)
                    view, at = view[n:], at + n
            if self._hash is None or at == offset:
                return
            if offset == self._hashed:
                self._hash.update(data)
                self._hashed = at
                self._catch_up(self._fd)
            elif offset > self._hashed and offset not in self._ahead:
                self._ahead[offset] = at
            else:  # bytes written again (a retried part): the file is re-read when it is verified
                self._hash = None

    def _catch_up(self, fd: int) -> None:
        """Hash the regions written ahead that now follow the hashed bytes (re-read from the file)."""
        while self._hashed in self._ahead:
            end = self._ahead.pop(self._hashed)
            while self._hashed < end:
                with local_writes(self.path):
                    chunk = os.pread(fd, min(READ_BACK_CHUNK, end - self._hashed), self._hashed)
                if not chunk:  # pragma: no cover - only if the file was cut behind the sink's back
                    return
                self._hash.update(chunk)
                self._hashed += len(chunk)

    def sha256(self) -> tuple[str, int] | None:
        """``("sha256:<hex>", n)``: the digest of the file's first ``n`` bytes, all written without a
        gap (a gap or a short write leaves ``n`` smaller than expected). None when a region was
        written twice: then only reading the file tells what it holds."""
        with self._lock:
            return None if self._hash is None else ("sha256:" + self._hash.hexdigest(), self._hashed)

    def fsync(self) -> None:
        with self._lock:
            if self._fd is not None:
                with local_writes(self.path):
                    os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class FileSlice:
    """``length`` bytes of a file from ``start``, as a seekable body for one upload part.

    It has a length and no ``fileno`` on purpose: botocore sizes a body with a ``fileno`` by
    the whole file, which would be wrong for a slice. Once ``cancel`` is set, every read raises
    :class:`Cancelled`: a part whose upload was abandoned (another part failed, the push was
    stopped) sends no more bytes, rather than finishing after its upload was aborted.
    """

    def __init__(self, path: Path, start: int, length: int, cancel: threading.Event | None = None) -> None:
        self._f = open(path, "rb")
        self._start, self._len, self._pos = start, length, 0
        self._cancel = cancel

    def __len__(self) -> int:
        return self._len

    def read(self, n: int = -1) -> bytes:
        if self._cancel is not None and self._cancel.is_set():
            raise Cancelled
        left = self._len - self._pos
        n = left if n is None or n < 0 else min(n, left)
        if n <= 0:
            return b""
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._len}[whence]
        self._pos = max(0, min(self._len, base + offset))
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "FileSlice":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
