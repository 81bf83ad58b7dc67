"""The interleaved timing of the benchmarks (``overhead.py``, ``peers.py``): contenders timed call by call in the
same process, so drift on a shared machine affects each alike."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

from torch import nn


def timed_call(fn: Callable[[], None], params: list[nn.Parameter]) -> float:
    """Seconds of one call of ``fn``; the gradients of ``params`` are reset to None first, outside the timing."""
    for p in params:
        p.grad = None
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    contenders: list[Callable[[], None]],
    params: list[nn.Parameter],
    budget_s: float,
    min_rounds: int,
    max_rounds: int,
    warmup: int,
) -> tuple[list[float], int, float]:
    """Median seconds per call of each contender, timed in interleaved rounds for about ``budget_s``.

    Each round calls every contender once (the order flipped every other round, so none always runs first),
    after ``warmup`` rounds. Also returns the number of rounds and the median within-round ratio of contender 1
    over 0.
    """
    warm_deadline = time.perf_counter() + 0.2 * budget_s
    for w in range(warmup):
        if w > 0 and time.perf_counter() > warm_deadline:
            break
        for fn in contenders:
            timed_call(fn, params)
    times: list[list[float]] = [[] for _ in contenders]
    gc.collect()
    # Rounds continue until the wall-clock budget is spent, so a loaded machine gets fewer rounds rather
    # than a longer run; min_rounds gives way after 3x the budget, but one round always runs.
    now = time.perf_counter()
    deadline, hard_deadline = now + budget_s, now + 3 * budget_s
    rounds = 0
    while rounds < max_rounds:
        now = time.perf_counter()
        if rounds >= 1 and (now > hard_deadline or (rounds >= min_rounds and now > deadline)):
            break
        order = range(len(contenders)) if rounds % 2 == 0 else reversed(range(len(contenders)))
        for i in order:
            times[i].append(timed_call(contenders[i], params))
        rounds += 1
    paired = statistics.median(b / a for a, b in zip(times[0], times[1])) if len(times) > 1 else 1.0
    return [statistics.median(ts) for ts in times], rounds, paired


def repeated(fn: Callable[[], None], params: list[nn.Parameter], runs: int) -> float:
    """Median seconds per call of ``fn`` over ``runs`` calls (no warm-up: for slow references)."""
    return statistics.median(timed_call(fn, params) for _ in range(runs))
