"""The timing tests' one method: series measured interleaved, medians compared."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable

Call = Callable[[int], Awaitable[None]]

# A missing dummy hash or a skipped statement shows as a factor of 10 to 100; a CPU shared
# with two other test processes moves honest medians by up to ~2 (0.56 seen under load).
FACTOR = 3.0


async def interleaved(rounds: int, *calls: Call) -> list[list[float]]:
    """Each call's durations: every call once per round, in turn, so machine noise hits every
    series alike. A call gets its round's number."""
    series: list[list[float]] = [[] for _ in calls]
    for i in range(rounds):
        for durations, call in zip(series, calls, strict=True):
            started = time.perf_counter()
            await call(i)
            durations.append(time.perf_counter() - started)
    return series


def assert_same_time(first: list[float], second: list[float]) -> None:
    ratio = statistics.median(second) / statistics.median(first)
    assert 1 / FACTOR < ratio < FACTOR, (ratio, first, second)
