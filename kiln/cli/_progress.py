"""Progress on stderr: build stages (one line per finished stage) and transfer bars.

Results go to stdout, progress to stderr, always — with ``--json`` too — so a script reads a
parseable document from stdout while a person (or a CI log) sees a build that runs for hours
make progress on stderr.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import click

from .. import api
from ._output import console

__all__ = ["StageReporter", "TransferBar"]


class _Elapsed:
    """A live status line whose elapsed time is computed at every refresh."""

    def __init__(self, reporter: "StageReporter") -> None:
        self.reporter = reporter

    def __rich__(self) -> str:
        r = self.reporter
        return f"{r.current} … {time.monotonic() - r.since:.1f}s"


class StageReporter:
    """Build progress on stderr: one line per finished stage with its duration; a live line on a terminal.

    Called with a stage's name when it starts (``on_stage``); the previous stage is then done.
    ``quiet`` is for callers that report otherwise; ``--json`` is not a reason to be quiet
    (the document goes to stdout, progress to stderr).
    """

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.t0 = self.since = time.monotonic()
        self.current: str | None = None
        self.status = None
        if not quiet and sys.stderr.isatty():
            self.status = console(stderr=True).status(_Elapsed(self))  # type: ignore[arg-type]
            self.current = "resolving"
            self.status.start()

    def _finish_current(self) -> None:
        if self.current is None or self.quiet:
            return
        now = time.monotonic()
        click.echo(f"[{now - self.t0:6.1f}s] {self.current} ({now - self.since:.1f}s)", err=True)

    def __call__(self, stage: str) -> None:
        if self.quiet:
            return
        self._finish_current()
        self.current, self.since = stage, time.monotonic()

    def stop(self) -> None:
        self._finish_current()
        self.current = None
        if self.status is not None:
            self.status.stop()


class TransferBar:
    """Bytes and throughput for transfers on a terminal (stderr); silent otherwise.

    The bar appears on the first byte that moves, not before: a lookup or a local build that
    transfers nothing shows none (it used to show ``pull 0/? bytes`` for the whole of a
    local build). The callback may be called from several transfer threads at once.
    """

    def __init__(self, what: str, enabled: bool = True) -> None:
        self.what = what
        self.enabled = enabled and sys.stderr.isatty()
        self.progress: Any = None
        self.task: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> Any:
        callback = self.advance if self.enabled else None
        self._ctx = api.reporting_transfers(callback)
        self._ctx.__enter__()
        return callback

    def _start(self) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.progress = Progress(TextColumn(self.what), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                 console=console(stderr=True), transient=True)
        self.task = self.progress.add_task(self.what, total=None)
        self.progress.start()

    def advance(self, n: int) -> None:
        if n <= 0:
            return
        with self._lock:
            if self.progress is None:
                self._start()
            self.progress.advance(self.task, n)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(None, None, None)
        with self._lock:
            if self.progress is not None:
                self.progress.stop()
