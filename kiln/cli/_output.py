"""Output helpers every command shares: JSON, tables, sizes, times, and parsing of sizes and durations.

What people script against (``docs/json.md``):

* ``--json`` documents go to stdout through :func:`print_json`, which presents values in one
  vocabulary: numbers as numbers (``smoothquant_alpha`` is stored as a canonical string because
  canonical key JSON refuses floats; output shows it as the number it is) and times as ISO 8601
  UTC strings (:func:`iso_time`). Stored documents printed whole — a manifest, a build record
  (which has its own published schema), the key inputs that are hashed — are wrapped in
  :class:`Verbatim` and printed exactly as stored.
* Tables are never cut when stdout is not a terminal (``kiln ls | awk '{print $1}'`` gets whole
  keys): :func:`console` gives a console as wide as any line when it is not writing to a terminal.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import Any, Callable

import click

__all__ = ["console", "print_json", "present", "Verbatim", "human_size", "age", "iso_time", "parse_size", "parse_duration",
           "json_option"]

# Wide enough for any row Kiln prints: rich then never squeezes a column or adds an ellipsis.
_UNLIMITED_WIDTH = 1 << 16

# Fields stored as strings for canonical JSON that output presents as numbers.
_NUMERIC_FIELDS = frozenset({"smoothquant_alpha"})


def console(stderr: bool = False, *, no_trunc: bool = False):  # type: ignore[no-untyped-def]
    """A rich console: terminal width on a terminal, unlimited otherwise (or with ``no_trunc``)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    wide = no_trunc or not stream.isatty()
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=_UNLIMITED_WIDTH if wide else None)


class Verbatim(dict):  # type: ignore[type-arg]
    """A stored document printed as stored (:func:`present` leaves it alone)."""


def present(data: Any) -> Any:
    """``data`` as output shows it: stored numeric strings (``smoothquant_alpha``) as numbers."""
    if isinstance(data, Verbatim):
        return data
    if isinstance(data, dict):
        out = {}
        for k, v in data.items():
            if k in _NUMERIC_FIELDS and isinstance(v, str):
                try:
                    out[k] = float(v)
                    continue
                except ValueError:
                    pass
            out[k] = present(v)
        return out
    if isinstance(data, (list, tuple)):
        return [present(v) for v in data]
    return data


def print_json(data: Any) -> None:
    click.echo(json.dumps(present(data), indent=2, sort_keys=True, default=str))


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``: machine-readable output on stdout (progress stays on stderr); shapes in docs/json/."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Machine-readable output on stdout (shape: docs/json.md); progress stays on stderr.")(f)


def human_size(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def iso_time(epoch: float) -> str | None:
    """A POSIX time as output shows every time: ISO 8601 UTC (None for an unknown time, 0)."""
    if not epoch:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: str | float) -> datetime | None:
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc) if value else None
    try:  # ISO 8601 as Kiln writes it (…Z), or with an offset; fromisoformat < 3.11 rejects "Z"
        t = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def age(when: str | float) -> str:
    """How long ago ``when`` (an ISO 8601 string or a POSIX time) was: 3d, 5h, 12m, 40s."""
    t = _parse_time(when)
    if t is None:
        return "?"
    s = max(0.0, (datetime.now(timezone.utc) - t).total_seconds())
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if s >= size:
            return f"{int(s // size)}{unit}"
    return f"{int(s)}s"


def parse_size(text: str) -> int:
    t = text.strip().upper().replace("IB", "").replace("B", "")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        value = int(float(t[:-1]) * mult[t[-1]]) if t and t[-1] in mult else int(t)
    except (ValueError, OverflowError):
        value = -1
    if value < 0:
        raise click.BadParameter(f"{text!r} is not a size; write e.g. 500M, 20G or 1T.")
    return value


def parse_duration(text: str) -> float:
    t = text.strip().lower()
    mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        value = float(t[:-1]) * mult[t[-1]] if t and t[-1] in mult else float(t)
    except ValueError:
        value = -1.0
    if not (0 <= value < float("inf")):
        raise click.BadParameter(f"{text!r} is not a duration; write e.g. 30m, 12h or 7d.")
    return value
