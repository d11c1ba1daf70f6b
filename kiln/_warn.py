"""Kiln's warnings (refused remote data, damaged entries and records, long downloads): one line each.

They go through the ``kiln`` logger, so a program using ``kiln.api`` configures them as it
configures logging; without any configuration Python prints them on stderr. The CLI asks for
them on stderr exactly as written (:func:`lines_to_stderr`).

``logging`` is imported at the first warning, not by the modules that may warn: it and the
``traceback`` module it imports are ~3 ms of every `kiln lookup`, which usually has nothing to warn about (docs/benchmarks.md,
issue 18, "Lookup").
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["lines_to_stderr", "say", "warn"]

_ONCE_LIMIT = 10_000  # distinct messages remembered for once=True; past it, repeats are printed again
_warned: set[str] = set()
_plain_stderr = False


def warn(message: str, *, once: bool = False) -> None:
    """``kiln: WARNING: <message>``. ``once``: only the first time this process sees the message
    (one lookup may read a bad object more than once; the user needs to hear of it once)."""
    if once:
        if message in _warned:
            return
        if len(_warned) < _ONCE_LIMIT:
            _warned.add(message)
    _logger().warning("kiln: WARNING: %s", message)


def say(message: str) -> None:
    """``kiln: <message>``: news a user waiting on long work should see (a model download)."""
    _logger().warning("kiln: %s", message)


def lines_to_stderr() -> None:
    """The CLI's choice: warnings on stderr as they are, one line each, not passed to the root logger."""
    global _plain_stderr
    _plain_stderr = True
    if "logging" in sys.modules:
        _logger()


def _logger() -> Any:
    import logging

    logger = logging.getLogger("kiln")
    if _plain_stderr and not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    return logger
