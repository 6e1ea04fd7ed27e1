"""The request tally (app.core.metrics.RequestTally) writes into the request histogram exactly
what observing each request would have: the same buckets, count and sum in the exposition."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from app.core.metrics import REQUEST_BUCKETS, RequestTally

LABELS = ["method", "route", "status"]


def _histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("requests", "requests", LABELS, buckets=REQUEST_BUCKETS, registry=registry)


def _exposition(registry: CollectorRegistry) -> dict[str, float]:
    samples = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("requests_") and "_created" not in line:
            series, value = line.rsplit(" ", 1)
            samples[series] = float(value)
    return samples


def _same(tallied: dict[str, float], direct: dict[str, float]) -> bool:
    """Counts exactly; sums up to float rounding (the tally adds in another order)."""
    return tallied.keys() == direct.keys() and all(
        math.isclose(tallied[k], direct[k], rel_tol=1e-12)
        if "_sum" in k
        else tallied[k] == direct[k]
        for k in direct
    )


def test_a_flushed_tally_equals_direct_observations() -> None:
    direct_registry, tallied_registry = CollectorRegistry(), CollectorRegistry()
    direct, tallied = _histogram(direct_registry), _histogram(tallied_registry)
    tally = RequestTally(tallied, REQUEST_BUCKETS)
    rng = random.Random(7)
    # Every bound exactly (le is inclusive), around each, beyond the last (+Inf), and zero.
    durations = [*REQUEST_BUCKETS, *(b * 1.0001 for b in REQUEST_BUCKETS), 0.0, 7.5, 60.0]
    durations += [rng.expovariate(1 / 0.02) for _ in range(2000)]
    label_sets = [("GET", "/auth/me", 200), ("POST", "/auth/refresh", 401), ("other", "x", 500)]
    for index, seconds in enumerate(durations):
        labels = label_sets[index % len(label_sets)]
        direct.labels(labels[0], labels[1], str(labels[2])).observe(seconds)
        tally.add(labels, seconds)
        if index == 1000:
            tally.flush()  # a flush in the middle, as the timer does
    assert not _same(_exposition(tallied_registry), _exposition(direct_registry))  # pending
    tally.flush()
    tally.flush()  # nothing new: writes nothing twice
    after, direct_samples = _exposition(tallied_registry), _exposition(direct_registry)
    assert len(direct_samples) == 3 * (len(REQUEST_BUCKETS) + 1 + 2)  # buckets, +Inf, count, sum
    assert _same(after, direct_samples), (after, direct_samples)
