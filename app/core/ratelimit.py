"""Rate limits by name and key, in process or shared through Redis (the `limits` library)."""

from __future__ import annotations

import math
import time
from typing import NoReturn

from limits import RateLimitItem, parse
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from app.core.errors import DomainError


class RateLimited(DomainError):
    status_code = 429
    code = "rate_limited"
    message = "Too many requests; retry after the time in Retry-After."

    def __init__(self, retry_after: int) -> None:
        super().__init__()
        self.retry_after = max(1, retry_after)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class RateLimiter:
    """Named limits such as {"login_ip": "30/minute"}; `hit` counts one request or refuses it.

    With a Redis URL every replica shares the counters; otherwise each process counts alone
    (right for a single instance, as documented)."""

    def __init__(
        self,
        limits: dict[str, str],
        *,
        redis_url: str | None,
        enabled: bool,
        namespace: str = "authsvc",
    ) -> None:
        self._items: dict[str, RateLimitItem] = {name: parse(v) for name, v in limits.items()}
        if redis_url:
            storage = storage_from_string("async+" + redis_url, key_prefix=namespace)
        else:
            storage = storage_from_string("async+memory://")
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._enabled = enabled

    async def hit(self, name: str, key: str) -> None:
        if not self._enabled:
            return
        item = self._items[name]
        if not await self._limiter.hit(item, name, key):
            await self._refuse(item, name, key)

    async def check(self, name: str, key: str) -> None:
        """Refuse if the limit is used up, without counting this request: for a request whose
        key is only a claim until the database confirms it (see `count`)."""
        if not self._enabled:
            return
        item = self._items[name]
        if not await self._limiter.test(item, name, key):
            await self._refuse(item, name, key)

    async def allows(self, name: str, key: str) -> bool:
        """Whether the limit has room, without counting (for a limit that decides how a
        request is treated rather than whether it is refused)."""
        if not self._enabled:
            return True
        return bool(await self._limiter.test(self._items[name], name, key))

    async def refuse(self, name: str, key: str) -> NoReturn:
        """Refuse a request that `allows` found over the limit, once its work turned out to
        need the room (the session store decides whether a refresh is a new rotation)."""
        await self._refuse(self._items[name], name, key)

    async def count(self, name: str, key: str) -> None:
        """Count a request that `check` let through and that proved legitimate; never refuses
        (the work is done by now)."""
        if self._enabled:
            await self._limiter.hit(self._items[name], name, key)

    async def _refuse(self, item: RateLimitItem, name: str, key: str) -> NoReturn:
        stats = await self._limiter.get_window_stats(item, name, key)
        raise RateLimited(math.ceil(stats.reset_time - time.time()))
