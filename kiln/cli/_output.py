"""Output helpers every command shares: JSON, sizes, ages, and parsing of sizes and durations."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable

import click

__all__ = ["console", "print_json", "human_size", "age", "parse_size", "parse_duration", "json_option"]


def console(stderr: bool = False):  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--json``: machine-readable output on stdout (progress stays on stderr)."""
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(f)


def human_size(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def age(created: str) -> str:
    try:
        t = datetime.strptime(created, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return "?"
    s = (datetime.now(timezone.utc) - t).total_seconds()
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
