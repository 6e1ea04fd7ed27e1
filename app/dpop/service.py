"""The DPoP replay cache (RFC 9449 §11.1): a proof's `jti` is accepted once, on every replica.

A proof passes the `iat` check for at most `2 * window` seconds (iat may lie `window` either
side of now), so each jti is remembered that long. Where: Redis when configured (`SET NX PX`,
one round trip, bounded by REDIS_TIMEOUT), otherwise the database every replica shares. When
Redis fails, the database takes over for that call and, as for the rate limiter, for the next
REDIS_RETRY_INTERVAL (one caller then probes Redis again): slower, still shared, never a hang
or a 500. What the database recorded meanwhile is written to Redis before Redis decides again
(`_backfill`), so a proof accepted during the outage is not accepted again after it. Left: a
proof recorded in Redis just before it failed could be replayed once through the database, and
while only some replicas lose Redis, they and the others check different stores.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.clock import Clock
from app.core.coalesce import Coalescer
from app.core.db import autocommit_connection, driver_connection, on_asyncpg
from app.core.ratelimit import Breaker
from app.dpop import repository
from app.dpop.errors import InvalidDPoPProof
from app.dpop.nonce import NonceIssuer
from app.dpop.proof import Proof, verify_proof

logger = logging.getLogger("app.dpop")
# At REDIS_TIMEOUT a pipeline of this many SETs still fits comfortably (about 30 ms); a longer
# outage at a higher rate keeps the newest (the oldest are the nearest to expiring anyway).
_BACKFILL_LIMIT = 20_000


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
        # Concurrent requests' jtis go in one round trip (app.core.coalesce).
        self._in_redis: Coalescer[bytes, datetime] = Coalescer(self._write_redis)
        self._in_database: Coalescer[bytes, datetime] = Coalescer(self._write_database)
        # The jtis (and until when) recorded in the database while Redis was not used: Redis
        # gets them before it decides again. Bounded: the oldest go first past the bound.
        self._to_backfill: dict[bytes, datetime] = {}

    async def remember(self, proof: Proof, now: datetime) -> None:
        """Record the proof's jti; InvalidDPoPProof if some replica saw it already."""
        key = hashlib.sha256(f"{proof.jkt}\x00{proof.jti}".encode()).digest()
        if not await self._first_use(key, now):
            raise InvalidDPoPProof("The DPoP proof was already used (its jti is not new).")

    async def purge(self, now: datetime) -> int:
        async with autocommit_connection(self._engine) as conn:
            return await repository.delete_expired(conn, now)

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    async def _first_use(self, key: bytes, now: datetime) -> bool:
        if self._redis is not None and self._breaker.allows_attempt():
            try:
                if self._to_backfill:
                    await self._backfill(now)
                stored = await self._in_redis.submit(key, now)
            except (TimeoutError, OSError, RedisError) as exc:
                if self._breaker.failed():
                    logger.warning("dpop.redis_unavailable", extra={"error": type(exc).__name__})
            else:
                if self._breaker.succeeded():
                    logger.warning("dpop.redis_recovered")
                return stored
        first = await self._in_database.submit(key, now)
        if first and self._redis is not None:
            self._remember_for_redis(key, now + self._ttl)
        return first

    def _remember_for_redis(self, key: bytes, expires_at: datetime) -> None:
        if len(self._to_backfill) >= _BACKFILL_LIMIT:
            self._to_backfill.pop(next(iter(self._to_backfill)))
        self._to_backfill[key] = expires_at

    async def _backfill(self, now: datetime) -> None:
        """Write to Redis what the database recorded while Redis was not used, each key for the
        rest of its time; on failure, keep them for the next attempt."""
        assert self._redis is not None  # noqa: S101 - only called with Redis configured
        pending, self._to_backfill = self._to_backfill, {}
        live = {key: at for key, at in pending.items() if at > now}
        try:
            async with asyncio.timeout(self._redis_timeout):
                async with self._redis.pipeline(transaction=False) as pipe:
                    for key, at in live.items():
                        ttl_ms = max(1, int((at - now).total_seconds() * 1000))
                        pipe.set(self._prefix + key.hex(), b"1", nx=True, px=ttl_ms)
                    await pipe.execute()
        except BaseException:
            self._to_backfill = {**live, **self._to_backfill}
            raise
        logger.info("dpop.redis_backfilled", extra={"keys": len(live)})

    async def _write_redis(self, batch: dict[bytes, datetime]) -> set[bytes]:
        """One pipeline for the batch (no MULTI: each SET NX stands alone), in REDIS_TIMEOUT."""
        assert self._redis is not None  # noqa: S101 - only submitted to with Redis configured
        ttl_ms = int(self._ttl.total_seconds() * 1000)
        keys = list(batch)
        async with asyncio.timeout(self._redis_timeout):
            if len(keys) == 1:  # a pipeline costs more than a lone command
                lone = await self._redis.set(self._prefix + keys[0].hex(), b"1", nx=True, px=ttl_ms)
                return set(keys) if lone else set()
            async with self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(self._prefix + key.hex(), b"1", nx=True, px=ttl_ms)
                stored: list[object] = await pipe.execute()
        return {key for key, ok in zip(keys, stored, strict=True) if ok}

    async def _write_database(self, batch: dict[bytes, datetime]) -> set[bytes]:
        now = max(batch.values())
        if on_asyncpg(self._engine):
            async with driver_connection(self._engine) as raw:
                return await repository.record_first_uses_asyncpg(
                    raw, list(batch), now=now, expires_at=now + self._ttl
                )
        async with autocommit_connection(self._engine) as conn:
            return {
                key
                for key, at in batch.items()
                if await repository.record_first_use(conn, key, now=at, expires_at=at + self._ttl)
            }


class DPoP:
    """Every check of a request's DPoP proof (RFC 9449 §4.3, §8, §11.1), and the settings that
    say what is required. Stateless checks first: a bad proof costs no replay-cache write."""

    def __init__(
        self,
        replay: ReplayCache,
        nonces: NonceIssuer,
        clock: Clock,
        *,
        algorithms: frozenset[str],
        window: float,
        required: bool,
        nonce_required: bool,
        origins: Sequence[str] = (),
    ) -> None:
        """`origins`: what a proof to our own routes may name as its htu's origin (empty: the
        request's own); see app.dpop.dependencies.request_url."""
        self._replay = replay
        self.origins = tuple(origins)
        self._nonces = nonces
        self._clock = clock
        self.algorithms = algorithms
        self.challenge_algs = " ".join(sorted(algorithms))  # WWW-Authenticate's algs
        self._window = window
        self.required = required
        self.nonce_required = nonce_required

    async def check(
        self,
        proofs: Sequence[str],
        *,
        method: str,
        url: str,
        access_token: str | None = None,
        jkt: str | None = None,
    ) -> Proof | None:
        """The request's proof, checked for `method url` (and `access_token`, whose hash it
        must carry, and the key `jkt` that token is bound to); None when the request carries
        none."""
        if not proofs:
            return None
        if len(proofs) > 1:  # RFC 9449 §4.3 check 1: exactly one
            raise InvalidDPoPProof("Send exactly one DPoP header.")
        now = self._clock.now()
        proof = verify_proof(
            proofs[0],
            method=method,
            url=url,
            now=now.timestamp(),
            window=self._window,
            algorithms=self.algorithms,
            access_token=access_token,
        )
        if jkt is not None and not hmac.compare_digest(proof.jkt, jkt):
            raise InvalidDPoPProof("The DPoP proof is signed by another key than the token's.")
        if self.nonce_required:
            self._nonces.check(proof.nonce, now.timestamp())
        await self._replay.remember(proof, now)
        return proof

    async def key_to_bind(
        self, proofs: Sequence[str], *, method: str, url: str, for_session: bool = True
    ) -> str | None:
        """For a request that obtains tokens: the thumbprint of the key the session (and its
        access tokens) are bound to, or None: unbound, refused by DPOP_REQUIRED for a session
        (`for_session`; a service client's token has none)."""
        proof = await self.check(proofs, method=method, url=url)
        if proof is None and self.required and for_session:
            raise InvalidDPoPProof("This service binds every session to a DPoP key: send a proof.")
        return proof.jkt if proof is not None else None

    def fresh_nonce(self) -> str | None:
        """The nonce to hand out with a response (RFC 9449 §8.2), when nonces are required."""
        return self._nonces.current(self._clock.now().timestamp()) if self.nonce_required else None

    async def purge(self) -> int:
        """Forget the jtis no proof could be replayed with any more (the prune job)."""
        return await self._replay.purge(self._clock.now())

    async def aclose(self) -> None:
        await self._replay.aclose()
