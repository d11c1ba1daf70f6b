"""The benchmarks' paired rounds (scripts/_rounds.py): every contender gets every predecessor equally often.

A plain rotation kept one contender always right after another, and the one after a large
deletion paid part of it (docs/benchmarks.md, issue 18, "Fifth session").
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from _rounds import balanced_orders, timed_rounds  # noqa: E402


@pytest.mark.parametrize("n", range(1, 8))
def test_each_contender_follows_each_other_equally_often(n: int) -> None:
    orders = balanced_orders(n)
    assert all(sorted(order) == list(range(n)) for order in orders)
    pairs = Counter((a, b) for order in orders for a, b in zip(order, order[1:]))
    assert set(pairs) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert len(set(pairs.values())) <= 1  # the same count for every ordered pair


def test_rounds_run_in_the_balanced_orders_and_clean_up_after_each(capsys: pytest.CaptureFixture[str]) -> None:
    log: list[str] = []
    names = ("a", "b", "c", "d")
    runs = {name: (lambda name=name: log.append(name)) for name in names}
    times = timed_rounds(runs, 4, after=lambda name: log.append("after " + name))
    assert {name: len(ts) for name, ts in times.items()} == {"a": 4, "b": 4, "c": 4, "d": 4}
    assert all(log[i + 1] == "after " + log[i] for i in range(0, len(log), 2))
    assert log[::2] == [names[i] for order in balanced_orders(4) for i in order]
    assert "rounds, a:" in capsys.readouterr().out


def test_rounds_are_rounded_up_to_whole_cycles_of_the_orders(capsys: pytest.CaptureFixture[str]) -> None:
    runs = {name: (lambda: None) for name in ("a", "b", "c")}  # three contenders: 6 orders
    times = timed_rounds(runs, 5)
    assert {name: len(ts) for name, ts in times.items()} == {"a": 6, "b": 6, "c": 6}
    assert "6 rounds rather than 5" in capsys.readouterr().out
