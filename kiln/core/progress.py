"""Where transfer progress goes while a command runs.

Deep inside a lookup, a pull may move gigabytes; the CLI wants a progress bar for it without
every function in between passing a callback along. ``transfer_progress`` is that channel: a
context variable holding a ``Progress`` callable (or None: silence, the API default).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

from ..cache import Progress

__all__ = ["transfer_progress", "current_progress", "reporting_transfers"]

transfer_progress: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("kiln_transfer_progress",
                                                                                    default=None)


def current_progress() -> Progress | None:
    return transfer_progress.get()


@contextlib.contextmanager
def reporting_transfers(progress: Progress | None) -> Iterator[None]:
    """Send the byte counts of every transfer inside the block to ``progress``."""
    token = transfer_progress.set(progress)
    try:
        yield
    finally:
        transfer_progress.reset(token)
