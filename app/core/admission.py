"""Admission control: a bound on the requests each process works on at once.

Beyond the database's capacity extra concurrent requests only queue (on the pool, or on
SQLite's one writer) and every request gets slower: 300 clients on SQLite waited up to 39 s.
Here a request waits at most `max_wait` seconds for one of `max_in_flight` slots, in arrival
order; otherwise it is answered with 503 `overloaded` and `Retry-After`, so the requests admitted
keep a bounded latency and the rest can retry elsewhere or later.

A request that would not get a slot within `max_wait` anyway is answered at once instead of at
the end of its wait: the queue drains at `max_in_flight` requests per (recent) request duration,
so a newcomer behind `n` waiters expects to wait `(n + 1) * duration / max_in_flight`. Under
sustained overload this keeps the queue short (the admitted requests barely wait) and makes a
shed request cheap: no timer, no second wake-up, on an event loop that is already short of time
(on PostgreSQL the CPU the shedding takes is the CPU the admitted requests need).

The gate is kept by the request envelope (app.core.middleware), the outermost layer, outside
FastAPI's and our own (see `outermost` in app.main), and is its first step: a shed request
costs the event loop as little as it can, since under overload every shed request takes time
from the admitted ones.
"""

from __future__ import annotations

import asyncio
import collections
import json

from starlette.types import Send

from app.core.errors import error_body
from app.core.metrics import ADMISSION_SHED

# Orchestration must still see the process while it sheds: probes and scrapes are never queued.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# Weight of the newest request in the running mean of request durations (in slot).
DURATION_WEIGHT = 0.05
# SQLite serialises writes on one connection: a few requests in flight keep it busy, more only
# wait on its lock. PostgreSQL: the pool plus a margin for the requests that need no connection.
SQLITE_MAX_IN_FLIGHT = 4
POOL_MARGIN = 4

_BODY = json.dumps(
    error_body("overloaded", "The service is at capacity; retry after the delay given.")
).encode()
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
    (b"retry-after", b"1"),
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
]


def default_max_in_flight(database_url: str, pool_size: int) -> int:
    if database_url.startswith("sqlite"):
        return SQLITE_MAX_IN_FLIGHT
    return pool_size + POOL_MARGIN


class Admission:
    """Admits at most `max_in_flight` HTTP requests at once; the others wait, first come first
    served, up to `max_wait` seconds for a slot, then are shed (`send_overloaded`)."""

    def __init__(self, *, max_in_flight: int, max_wait: float) -> None:
        self.max_in_flight = max_in_flight
        self.max_wait = max_wait
        self.in_flight = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.duration = 0.0  # running mean of the time an admitted request holds its slot

    def enter_now(self) -> bool:
        """A slot at once, if one is free and nobody waits for one (no await: the common case
        costs no coroutine)."""
        if self.in_flight < self.max_in_flight and not self.waiters:
            self.in_flight += 1
            return True
        return False

    async def enter(self) -> bool:
        """A slot within `max_wait` (False: shed this request)."""
        return self.enter_now() or await self._wait_for_slot()

    def leave(self, held: float) -> None:
        """Give the slot back, after holding it `held` seconds."""
        weight = DURATION_WEIGHT if self.duration else 1.0  # the first one sets it
        self.duration += weight * (held - self.duration)
        if self.waiters:
            self._release()
        else:
            self.in_flight -= 1

    def expected_wait(self) -> float:
        """How long a newcomer would wait for a slot, from the queue ahead of it."""
        return (len(self.waiters) + 1) * self.duration / self.max_in_flight

    async def _wait_for_slot(self) -> bool:
        if self.expected_wait() > self.max_wait:
            return False  # it would be shed at the end of its wait: say so now
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            async with asyncio.timeout(self.max_wait):
                await waiter  # _release hands its slot over: in_flight already counts it
        except TimeoutError:
            pass
        except asyncio.CancelledError:  # the server shutting down: give back what we hold
            self._abandon(waiter)
            raise
        if _granted(waiter):  # a slot handed over just as the wait ran out is still ours
            return True
        self._abandon(waiter)
        return False

    def _abandon(self, waiter: asyncio.Future[None]) -> None:
        if _granted(waiter):
            self._release()
        elif waiter in self.waiters:
            self.waiters.remove(waiter)

    def _release(self) -> None:
        # Hand the slot straight to the oldest waiter still waiting, so a newcomer cannot
        # overtake the queue; with nobody waiting, free it.
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1


async def send_overloaded(send: Send, request_id: str | None) -> None:
    """The answer of a shed request: 503 `overloaded`, Retry-After: 1. A sane X-Request-ID is
    echoed, as every other answer does, so that a client can match the 503 to the request."""
    ADMISSION_SHED.labels("no_slot").inc()
    headers = _HEADERS
    if request_id is not None:
        headers = [*_HEADERS, (b"x-request-id", request_id.encode())]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": _BODY})


def _granted(waiter: asyncio.Future[None]) -> bool:
    return waiter.done() and not waiter.cancelled()
