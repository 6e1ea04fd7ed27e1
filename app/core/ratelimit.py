"""Rate limits by name and key, in process or shared through Redis (the `limits` library).

Redis is a helper here, not a dependency: when it fails or stalls the limiter *fails open to
local counting* (each process counts alone, as without REDIS_URL) rather than refusing logins,
and every Redis call is bounded by REDIS_TIMEOUT, so a frozen Redis never holds a request
longer than that. After a failure Redis is left alone for REDIS_RETRY_INTERVAL (a breaker), so
an outage costs one timeout per interval, not one per request. See docs/deploy.md, "Redis".
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal, NoReturn, TypeVar

from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string

from app.core import metrics
from app.core.errors import DomainError

logger = logging.getLogger("app.ratelimit")
T = TypeVar("T")
RedisStatus = Literal["ok", "down", "not configured"]


class RateLimited(DomainError):
    status_code = 429
    code = "rate_limited"
    message = "Too many requests; retry after the time in Retry-After."

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = max(1, retry_after)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class Breaker:
    """Whether to ask Redis now: after a failure, not again for `retry_interval` seconds, and
    then one caller probes while the others stay local (a stalled Redis costs each process one
    timeout per interval)."""

    def __init__(self, retry_interval: float) -> None:
        self._retry_interval = retry_interval
        self._retry_at: float | None = None  # None: Redis is believed up

    @property
    def is_open(self) -> bool:
        return self._retry_at is not None

    def allows_attempt(self) -> bool:
        if self._retry_at is None:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        self._retry_at = now + self._retry_interval  # this caller probes; the others wait
        return True

    def failed(self) -> bool:
        """Open (again); True when Redis was believed up until now."""
        was_closed = self._retry_at is None
        self._retry_at = time.monotonic() + self._retry_interval
        return was_closed

    def succeeded(self) -> bool:
        """Close; True when Redis was believed down until now."""
        was_open = self._retry_at is not None
        self._retry_at = None
        return was_open


class RateLimiter:
    """Named limits such as {"login_ip": "30/minute"}; `hit` counts one request or refuses it.

    With a Redis URL every replica shares the counters; otherwise, and while Redis is
    unavailable, each process counts alone (right for a single instance, as documented)."""

    def __init__(
        self,
        limits: dict[str, str],
        *,
        redis_url: str | None,
        enabled: bool,
        namespace: str = "authsvc",
        redis_timeout: float = 0.25,
        redis_retry_interval: float = 5.0,
    ) -> None:
        self._items: dict[str, RateLimitItem] = {name: parse(v) for name, v in limits.items()}
        self._local = SlidingWindowCounterRateLimiter(storage_from_string("async+memory://"))
        self._redis: Storage | None = None
        self._shared: SlidingWindowCounterRateLimiter | None = None
        if redis_url:
            # The client's own timeouts (coredis) end a stalled call cleanly; the asyncio
            # timeout around each call (`_run`) is the bound whatever the client does.
            redis = storage_from_string(
                "async+" + redis_url,
                key_prefix=namespace,
                wrap_exceptions=True,  # Redis errors arrive as limits' StorageError
                connect_timeout=redis_timeout,
                stream_timeout=redis_timeout,
            )
            if not isinstance(redis, Storage):  # an "async+" scheme gives an async storage
                raise TypeError(f"not an async rate-limit storage: {type(redis).__name__}")
            self._redis = redis
            self._shared = SlidingWindowCounterRateLimiter(redis)
        self._timeout = redis_timeout
        self._breaker = Breaker(redis_retry_interval)
        self._enabled = enabled

    async def hit(self, name: str, key: str) -> None:
        if not self._enabled:
            return
        item = self._items[name]
        if not await self._run(name, lambda limiter: limiter.hit(item, name, key)):
            await self._refuse(item, name, key)

    async def check(self, name: str, key: str) -> None:
        """Refuse if the limit is used up, without counting this request: for a request whose
        key is only a claim until the database confirms it (see `count`)."""
        if not self._enabled:
            return
        item = self._items[name]
        if not await self._run(name, lambda limiter: limiter.test(item, name, key)):
            await self._refuse(item, name, key)

    async def allows(self, name: str, key: str) -> bool:
        """Whether the limit has room, without counting (for a limit that decides how a
        request is treated rather than whether it is refused)."""
        if not self._enabled:
            return True
        item = self._items[name]
        return bool(await self._run(name, lambda limiter: limiter.test(item, name, key)))

    async def refuse(self, name: str, key: str) -> NoReturn:
        """Refuse a request that `allows` found over the limit, once its work turned out to
        need the room (the session store decides whether a refresh is a new rotation)."""
        await self._refuse(self._items[name], name, key)

    async def count(self, name: str, key: str) -> None:
        """Count a request that `check` let through and that proved legitimate; never refuses
        (the work is done by now)."""
        if self._enabled:
            item = self._items[name]
            await self._run(name, lambda limiter: limiter.hit(item, name, key))

    async def redis_status(self) -> RedisStatus:
        """For /readyz: "down" while Redis is left alone after a failure or does not answer a
        PING within the timeout. Informational: the limits hold (locally) either way. A PING
        that answers also ends the fallback, so a quiet replica notices the recovery too."""
        if self._redis is None:
            return "not configured"
        if not self._breaker.allows_attempt():
            return "down"
        try:
            async with asyncio.timeout(self._timeout):
                answered = await self._redis.check()  # False on any Redis error
        except TimeoutError as exc:
            self._redis_failed(exc)
            return "down"
        if not answered:
            self._redis_failed(StorageError(ConnectionError("PING failed")))
            return "down"
        self._redis_answered()
        return "ok"

    async def _refuse(self, item: RateLimitItem, name: str, key: str) -> NoReturn:
        stats = await self._run(name, lambda limiter: limiter.get_window_stats(item, name, key))
        raise RateLimited(math.ceil(stats.reset_time - time.time()))

    async def _run(
        self, name: str, call: Callable[[SlidingWindowCounterRateLimiter], Awaitable[T]]
    ) -> T:
        """`call` on the shared limiter within the timeout, or on the local one when Redis is
        unset, known down, or fails now (fail open: never a 500, never a hang)."""
        if self._shared is None:
            return await call(self._local)
        if self._breaker.allows_attempt():
            try:
                async with asyncio.timeout(self._timeout):
                    result = await call(self._shared)
            except (StorageError, TimeoutError, OSError) as exc:
                self._redis_failed(exc)
            else:
                self._redis_answered()
                return result
        metrics.RATELIMIT_LOCAL_FALLBACKS.labels(name).inc()
        return await call(self._local)

    def _redis_answered(self) -> None:
        if self._breaker.succeeded():
            logger.warning("ratelimit.redis_recovered")

    def _redis_failed(self, exc: Exception) -> None:
        kind = "timeout" if isinstance(exc, TimeoutError) else "error"
        metrics.RATELIMIT_REDIS_FAILURES.labels(kind).inc()
        # One line when Redis goes down (and one when it is back), not one per request:
        # the failures during an outage are in the metric.
        if self._breaker.failed():
            logger.warning(
                "ratelimit.redis_unavailable",
                extra={
                    "error_type": type(exc.__cause__ or exc).__name__,
                    "fallback": "local counting",
                },
            )
