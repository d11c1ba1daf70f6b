"""Paired benchmark rounds whose orders give every contender every predecessor equally often.

A plain rotation (ABC, BCA, CAB) keeps the cyclic order, so B always runs right after A. On
this machine the run after a large deletion or an unsynced write pays part of its cost (ext4
with ``discard`` on a thin-provisioned virtual disk), and a rotation puts that cost on the
same contender in every round. Seen: in bench_remote's S3 rounds `get_object` always ran right
after Kiln's pull and the deletion of its store, and against s3rver its median was 1.5-1.7x
that of the same `get_object` followed by an fsync (docs/benchmarks.md, issue 18, "Fifth session").

Williams designs balance that first-order carry-over: over n rounds (2n for an odd n) every
ordered pair, X right after Y, occurs equally often.
"""

from __future__ import annotations

import time
from typing import Callable


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of ``range(n)``, one a round, in which each index follows each other equally often."""
    first, low, high = [0], 1, n - 1
    while len(first) < n:  # 0, 1, n-1, 2, n-2, ...
        if len(first) % 2:
            first.append(low)
            low += 1
        else:
            first.append(high)
            high -= 1
    rows = [[(i + shift) % n for i in first] for shift in range(n)]
    return rows if n % 2 == 0 else rows + [row[::-1] for row in rows]


def timed_rounds(runs: dict[str, Callable[[], object]], rounds: int, *,
                 after: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Seconds of each run in each of at least ``rounds`` rounds, in :func:`balanced_orders`, every
    round printed: single timings on a shared 2-core machine move by more than the differences
    measured. The rounds are rounded up to whole cycles of the orders (the balance holds only
    over those: 6 for three contenders). ``after(name)`` runs untimed after each run (to delete
    what it wrote)."""
    names = list(runs)
    orders = balanced_orders(len(names))
    whole = -(-rounds // len(orders)) * len(orders)
    if whole != rounds:
        print(f"    {whole} rounds rather than {rounds}: whole cycles of {len(orders)} balanced orders", flush=True)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(whole):
        for i in orders[r % len(orders)]:
            t0 = time.perf_counter()
            runs[names[i]]()
            times[names[i]].append(time.perf_counter() - t0)
            if after is not None:
                after(names[i])
    for name, ts in times.items():
        print(f"    rounds, {name}: {' '.join(f'{t:.2f}' for t in ts)}", flush=True)
    return times
