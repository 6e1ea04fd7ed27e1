"""Prometheus metrics (prometheus-client), safe with several uvicorn workers.

With several workers, `python -m app serve` points PROMETHEUS_MULTIPROC_DIR at a fresh folder
before the workers start; every process then writes its samples there and /metrics aggregates
them, whichever worker answers the scrape.
"""

from __future__ import annotations

import functools
import os
from bisect import bisect_left
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.types import Scope

# One instrument per request, as OpenTelemetry's http.server.request.duration: its `_count`
# series are the requests by method, route and status, so no separate counter is updated on
# every request (each update takes a lock; together they were a measurable share of a bare
# request, docs/performance.md).
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REQUESTS = Histogram(
    "authsvc_http_request_duration_seconds",
    "HTTP requests by method, route template and status; `_count` counts them "
    "(written every 2 s and at each scrape)",
    ["method", "route", "status"],
    buckets=REQUEST_BUCKETS,
)
AUTH_EVENTS = Counter(
    "authsvc_auth_events_total",
    "Security events by name: login.succeeded/failed, refresh.rotated/retried/reuse_detected, "
    "logout, account.locked, ...",
    ["event"],
)
REUSE_DETECTIONS = Counter(
    "authsvc_refresh_reuse_detections_total",
    "Refresh-token reuse detected, by class",
    ["reuse_class"],
)
ACTIVE_SESSIONS = Gauge(
    "authsvc_active_sessions", "Live sessions (at the last scrape)", multiprocess_mode="mostrecent"
)
POOL_CHECKED_OUT = Gauge(
    "authsvc_db_pool_checked_out", "Database connections in use", multiprocess_mode="livesum"
)
POOL_SIZE = Gauge("authsvc_db_pool_size", "Database pool size", multiprocess_mode="livesum")
# Redis failing open (app/core/ratelimit.py): its failures by kind, and the limit checks that
# were counted in-process instead while it was unavailable.
RATELIMIT_REDIS_FAILURES = Counter(
    "authsvc_ratelimit_redis_failures_total",
    "Rate-limit calls to Redis that failed (error) or exceeded REDIS_TIMEOUT (timeout)",
    ["kind"],
)
# Admission control (app/core/admission.py): requests answered 503 overloaded at once because
# every slot stayed busy for ADMISSION_MAX_WAIT_MS. Labelled (one reason today) because an
# unlabelled counter writes its sample file at import, which would show every worker as having
# served before it has.
ADMISSION_SHED = Counter(
    "authsvc_admission_shed_total",
    "Requests shed with 503 overloaded, by reason (no_slot: none free within the wait)",
    ["reason"],
)
RATELIMIT_LOCAL_FALLBACKS = Counter(
    "authsvc_ratelimit_local_fallbacks_total",
    "Rate-limit checks counted in this process because Redis was unavailable, by limit name",
    ["limit"],
)


def render() -> tuple[bytes, str]:
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


# Label values must come from a fixed set, or a client inventing methods grows the series forever.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# Set by a layer that answers before routing (the identity check refusing a token) when the
# path is one of the routes' own: the route it was meant for, instead of "unmatched".
ROUTE_LABEL = "authsvc.route_label"


def record_request(scope: Scope, status: int, seconds: float) -> None:
    """Count and time one finished HTTP request under its route template (not the raw path,
    whose ids would explode the label set). Called by the request-envelope middleware, which already
    wraps every request, so measuring costs no extra middleware layer."""
    route = getattr(scope.get("route"), "path", None) or scope.get(ROUTE_LABEL) or "unmatched"
    method = scope["method"] if scope["method"] in _METHODS else "other"
    _tally.add((method, route, status), seconds)


class RequestTally:
    """Finished requests of this process not yet written into REQUESTS, by labels: a bucket
    count per bound and the sum. `Histogram.observe` takes a lock per value it updates (and
    with several workers writes a shared memory map): a quarter of the middleware stack's
    instructions per request (docs/performance.md). Here a request costs a dict lookup, a
    bisection and two additions; `flush` writes everything gathered since the last one, at
    each scrape and every 2 s (app.main), so another worker's requests reach /metrics within
    2 s. Used from the event loop's thread only (no lock)."""

    def __init__(self, histogram: Histogram, bounds: tuple[float, ...]) -> None:
        self._histogram = histogram
        self.bounds = bounds  # without +Inf: an index past them is the +Inf bucket
        # Per labels: a count per bucket, then the sum of the durations.
        self.pending: dict[tuple[str, str, int], list[float]] = {}

    def start(self, labels: tuple[str, str, int]) -> list[float]:
        counts = self.pending[labels] = [0.0] * (len(self.bounds) + 2)
        return counts

    def add(self, labels: tuple[str, str, int], seconds: float) -> None:
        counts = self.pending.get(labels) or self.start(labels)
        counts[bisect_left(self.bounds, seconds)] += 1  # le: the first bound >= it
        counts[-1] += seconds

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for (method, route, status), counts in pending.items():
            child = _requests(self._histogram, method, route, status)
            # prometheus-client has no bulk observe: its per-bucket values, as observe() does
            # (tests/ops/test_metrics.py checks the exposition against direct observations).
            for bucket, count in zip(child._buckets, counts[:-1], strict=True):
                if count:
                    bucket.inc(count)
            child._sum.inc(counts[-1])


# The label sets are bounded (route templates, known methods, statuses), so the children can
# be cached: `labels()` takes a lock and builds a key on every call.
@functools.cache
def _requests(histogram: Histogram, method: str, route: str, status: int) -> Any:
    return histogram.labels(method, route, str(status))


_tally = RequestTally(REQUESTS, REQUEST_BUCKETS)


def sample(pool: Any) -> None:
    """What is written on a 2 s timer (app.main) and at each scrape, not per request: this
    process's pool gauges (two multiprocess gauge writes per request were a measurable share
    of a bare request) and the requests tallied since the last time."""
    POOL_CHECKED_OUT.set(pool.checkedout())
    POOL_SIZE.set(pool.size())
    _tally.flush()


# The outbox (app/outbox/): messages to other systems (back-channel logout), delivered by a
# worker in every replica. Pending: written and neither delivered nor given up (sampled from
# the table, the same figure in every replica). Latency: from the commit that wrote a message
# (its `created_at`) to the receiver's acknowledgement.
OUTBOX_PENDING = Gauge(
    "authsvc_outbox_pending",
    "Outbox messages neither delivered nor given up, by kind (sampled)",
    ["kind"],
    multiprocess_mode="mostrecent",
)
OUTBOX_DELIVERY_SECONDS = Histogram(
    "authsvc_outbox_delivery_seconds",
    "From writing an outbox message to its delivery, by kind",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0, 300.0, 3600.0),
)
OUTBOX_ATTEMPT_FAILURES = Counter(
    "authsvc_outbox_attempt_failures_total",
    "Failed delivery attempts by kind and reason (timeout, connect_error, status_NNN, ...)",
    ["kind", "reason"],
)
OUTBOX_GAVE_UP = Counter(
    "authsvc_outbox_gave_up_total",
    "Outbox messages given up, by kind and reason (expired, status_400, client_unknown)",
    ["kind", "reason"],
)
