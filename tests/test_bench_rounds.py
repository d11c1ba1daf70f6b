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


def test_a_plain_rotation_would_not_be_balanced() -> None:
    rotations = [[(i + r) % 3 for i in range(3)] for r in range(3)]
    pairs = Counter((a, b) for order in rotations for a, b in zip(order, order[1:]))
    assert (1, 0) not in pairs  # 0 never runs right after 1: what balanced_orders exists to avoid


def test_rounds_time_every_run_once_a_round_and_clean_up_after_each(capsys: pytest.CaptureFixture[str]) -> None:
    log: list[str] = []
    runs = {name: (lambda name=name: log.append(name)) for name in ("a", "b", "c", "d")}
    times = timed_rounds(runs, 5, after=lambda name: log.append("after " + name))
    assert {name: len(ts) for name, ts in times.items()} == {"a": 5, "b": 5, "c": 5, "d": 5}
    assert all(log[i + 1] == "after " + log[i] for i in range(0, len(log), 2))
    firsts = [log[i] for i in range(0, len(log), 8)]
    assert len(set(firsts)) > 1  # the order changes from round to round
    assert "rounds, a:" in capsys.readouterr().out
