"""The DPoP replay cache (RFC 9449 §11.1): a proof's `jti` is accepted once, on every replica.

A proof passes the `iat` check for at most `2 * window` seconds (iat may lie `window` either
side of now), so each jti is remembered that long. Where: Redis when configured (`SET NX PX`,
one round trip, bounded by REDIS_TIMEOUT), otherwise the database every replica shares. When
Redis fails, the database takes over for that call and, as for the rate limiter, for the next
REDIS_RETRY_INTERVAL (one caller then probes Redis again): slower, still shared, never a hang
or a 500; a proof recorded in Redis just before it failed could be replayed once through the
database in the meantime.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from datetime import datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.db import autocommit_connection
from app.core.ratelimit import Breaker
from app.dpop import repository
from app.dpop.errors import InvalidDPoPProof
from app.dpop.proof import Proof

logger = logging.getLogger("app.dpop")


class ReplayCache:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        window: float,
        redis: Redis | None = None,
        redis_timeout: float = 0.25,
        redis_retry_interval: float = 5.0,
        namespace: str = "authsvc",
    ) -> None:
        self._engine = engine
        self._ttl = timedelta(seconds=2 * window)
        self._redis = redis
        self._redis_timeout = redis_timeout
        # As the rate limiter: after a failure Redis is left alone for REDIS_RETRY_INTERVAL, so
        # a frozen Redis costs one timeout per interval, not one per proof.
        self._breaker = Breaker(redis_retry_interval)
        self._prefix = f"{namespace}:dpop-jti:"

    async def remember(self, proof: Proof, now: datetime) -> None:
        """Record the proof's jti; InvalidDPoPProof if some replica saw it already."""
        key = hashlib.sha256(f"{proof.jkt}\x00{proof.jti}".encode()).digest()
        if not await self._first_use(key, now):
            raise InvalidDPoPProof("The DPoP proof was already used (its jti is not new).")

    async def purge(self, now: datetime) -> int:
        async with autocommit_connection(self._engine) as conn:
            return await repository.delete_expired(conn, now)

    async def _first_use(self, key: bytes, now: datetime) -> bool:
        if self._redis is not None and self._breaker.allows_attempt():
            try:
                async with asyncio.timeout(self._redis_timeout):
                    stored = await self._redis.set(
                        self._prefix + key.hex(),
                        b"1",
                        nx=True,
                        px=int(self._ttl.total_seconds() * 1000),
                    )
            except (TimeoutError, OSError, RedisError) as exc:
                if self._breaker.failed():
                    logger.warning("dpop.redis_unavailable", extra={"error": type(exc).__name__})
            else:
                if self._breaker.succeeded():
                    logger.warning("dpop.redis_recovered")
                return bool(stored)
        async with autocommit_connection(self._engine) as conn:
            return await repository.record_first_use(conn, key, now=now, expires_at=now + self._ttl)
