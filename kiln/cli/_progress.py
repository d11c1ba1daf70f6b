"""Progress on stderr: build stages (one line per finished stage) and transfer bars.

Results go to stdout, progress to stderr, always, so ``--json`` output stays parseable while
a build runs for hours.
"""

from __future__ import annotations

import sys
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
    """Build progress: one line per finished stage with its duration; a live line on a terminal.

    Called with a stage's name when it starts (``on_stage``); the previous stage is then done.
    """

    def __init__(self, quiet: bool) -> None:
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
    """Bytes and throughput for transfers on a terminal (stderr); silent otherwise."""

    def __init__(self, what: str, enabled: bool = True) -> None:
        self.progress = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            self.progress = Progress(TextColumn(what), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                     console=console(stderr=True), transient=True)
            self.task = self.progress.add_task(what, total=None)

    def __enter__(self) -> Any:
        if self.progress is not None:
            self.progress.start()
        callback = self.advance if self.progress is not None else None
        self._ctx = api.reporting_transfers(callback)
        self._ctx.__enter__()
        return callback

    def advance(self, n: int) -> None:
        assert self.progress is not None
        self.progress.advance(self.task, n)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(None, None, None)
        if self.progress is not None:
            self.progress.stop()
