"""Revocations shared by every replica of a downstream service, through Redis.

Each replica keeps a local copy of every revocation it has seen (its own receiver's and those
published by the others), and also asks Redis on each check (one MGET, bounded by
`redis_timeout`), so a replica that missed a message still refuses the token. WebSockets on
other replicas are closed through Redis pub/sub (channel `<namespace>:revocations`): a message
arrives in milliseconds, well within the 1 s promise; a poll would cost every replica a Redis
call per interval even when nothing happens.

Redis down (documented in docs/downstream.md): a check falls back to the local copy
(`redis_fail_closed=False`, the default) or refuses with 503 (`True`); the receiver answers 503
without recording the logout token's jti, so the auth service's outbox retries it until Redis
is back (the local copy refuses the session on this replica at once all the same).

Redis is a trust boundary: whoever can write to it can end sessions (or forget their ends), and
whoever can publish on the channel can close sockets. It must be private to the service's
replicas (docs/downstream.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from authsvc_kit.dpop import MemoryReplayCache
from authsvc_kit.errors import RevocationsUnavailable
from authsvc_kit.principal import Principal
from authsvc_kit.revocation import Listener, MemoryRevocations, Revocation

logger = logging.getLogger("authsvc_kit.redis")
_FAILURES = (RedisError, OSError, TimeoutError)
# A user's cut-off only moves forward, and its entry lives as long as the longest TTL given:
# two replicas (or a retried logout) writing out of order must not lower either.
_RAISE_CUTOFF = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > current then
    redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
end
if tonumber(ARGV[2]) > redis.call('TTL', KEYS[1]) then
    redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 1
"""


class RedisRevocations:
    def __init__(
        self,
        url: str,
        *,
        namespace: str = "authsvc-kit",
        timeout: float = 0.25,
        fail_closed: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = url
        self._ns = namespace
        self._timeout = timeout
        self._fail_closed = fail_closed
        self._clock = clock
        self.local = MemoryRevocations(clock)
        self._redis = self._client(socket_timeout=timeout)
        self._channel = f"{namespace}:revocations"
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._down = False

    def _client(self, *, socket_timeout: float | None) -> Redis:
        return Redis.from_url(
            self._url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),  # one try: the caller's time is bounded
        )

    def add_listener(self, listener: Listener) -> None:
        self.local.add_listener(listener)

    async def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="authsvc-kit-revocations")
            # Let the subscription settle so a revocation published right after start is heard;
            # Redis being down must not hold the application's start-up.
            with contextlib.suppress(TimeoutError):  # asyncio.timeout keeps a cancellation
                async with asyncio.timeout(1.0):
                    await self._subscribed.wait()

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self._redis.aclose()

    async def revoke(self, revocation: Revocation) -> None:
        """Recorded here at once; then in Redis and published, or RevocationsUnavailable."""
        self.local.remember(revocation)
        ttl = max(1, int(revocation.expires_at - self._clock()))
        key, value = self._entry(revocation)
        message = json.dumps(
            {"sid": revocation.sid, "sub": revocation.sub, "iat": revocation.issued_at, "ttl": ttl}
        )

        async def write() -> None:
            async with self._redis.pipeline(transaction=False) as pipe:
                if revocation.sid is not None:
                    pipe.set(key, value, ex=ttl)
                else:
                    pipe.eval(_RAISE_CUTOFF, 1, key, value, ttl)
                pipe.publish(self._channel, message)
                await pipe.execute()

        await self._call(write)

    def knows(self, principal: Principal) -> bool:
        return self.local.knows(principal)

    def _entry(self, revocation: Revocation) -> tuple[str, str]:
        if revocation.sid is not None:
            return f"{self._ns}:sid:{revocation.sid}", "1"
        return f"{self._ns}:sub:{revocation.sub}", str(revocation.issued_at)

    async def is_revoked(self, principal: Principal) -> bool:
        if self.local.knows(principal):
            return True
        keys = [f"{self._ns}:sub:{principal.user_id}"]
        if principal.session_id is not None:
            keys.append(f"{self._ns}:sid:{principal.session_id}")

        async def read() -> list[Any]:
            values: list[Any] = await self._redis.mget(keys)
            return values

        try:
            values = await self._call(read)
        except RevocationsUnavailable:
            if self._fail_closed:
                raise
            return False  # fail open to what this replica knows (checked above)
        cutoff = values[0]
        if len(values) > 1 and values[1] is not None:
            return True
        try:
            return cutoff is not None and principal.issued_at <= int(cutoff)
        except ValueError:  # not written by the kit: never a 500 for it
            logger.warning("authsvc_kit.redis_value_ignored")
            return False

    async def claim_jti(self, jti: str, ttl: int) -> bool:
        async def claim() -> bool:
            return bool(await self._redis.set(f"{self._ns}:jti:{jti}", "1", ex=ttl, nx=True))

        return bool(await self._call(claim))

    async def release_jti(self, jti: str) -> None:
        async def release() -> None:
            await self._redis.delete(f"{self._ns}:jti:{jti}")

        with contextlib.suppress(RevocationsUnavailable):
            await self._call(release)

    async def _call(self, operation: Callable[[], Any]) -> Any:
        try:
            async with asyncio.timeout(self._timeout):
                result = await operation()
        except _FAILURES as exc:
            if not self._down:
                self._down = True
                logger.warning("authsvc_kit.redis_unavailable", extra={"error": type(exc).__name__})
            raise RevocationsUnavailable() from exc
        if self._down:
            self._down = False
            logger.info("authsvc_kit.redis_available")
        return result

    async def _listen(self) -> None:
        """Hear the other replicas' revocations (and our own, harmlessly twice); reconnect with
        backoff when Redis goes away."""
        delay = 0.2
        while True:
            client = self._client(socket_timeout=None)
            try:
                async with client.pubsub() as pubsub:
                    async with asyncio.timeout(self._timeout * 4):
                        await pubsub.subscribe(self._channel)
                    self._subscribed.set()
                    delay = 0.2
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is not None:
                            self._heard(message.get("data"))
            except _FAILURES as exc:
                logger.warning("authsvc_kit.redis_pubsub_lost", extra={"error": type(exc).__name__})
            finally:
                with contextlib.suppress(*_FAILURES):
                    await client.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _heard(self, data: object) -> None:
        try:
            body = json.loads(data if isinstance(data, str | bytes) else "")
            revocation = Revocation(
                sid=body.get("sid"),
                sub=body.get("sub"),
                issued_at=int(body["iat"]),
                expires_at=self._clock() + int(body["ttl"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            logger.warning("authsvc_kit.redis_message_ignored")
            return
        self.local.remember(revocation)


class RedisReplayCache:
    """DPoP proof jtis shared by every replica (`SET NX PX`, one call bounded by `timeout`),
    so a proof used at one replica is refused at all. Each is also kept in this process:
    a replay to the same replica costs no Redis call, and when Redis fails the local copy
    decides alone (logged once per outage; Redis is then left alone for `retry_interval`, so a
    frozen Redis costs one timeout per interval, not one per request). During an outage a
    proof could be replayed once to another replica within its iat window: availability is
    kept, as for revocations."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "authsvc-kit",
        timeout: float = 0.25,
        retry_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._prefix = f"{namespace}:dpop:"
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._clock = clock
        self._retry_at = 0.0
        self.local = MemoryReplayCache(clock)
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )

    async def claim(self, key: str, ttl: float) -> bool:
        if not self.local.claim_now(key, ttl):
            return False
        if self._clock() < self._retry_at:
            return True
        try:
            async with asyncio.timeout(self._timeout):
                fresh = await self._redis.set(
                    self._prefix + key, "1", px=max(int(ttl * 1000), 1), nx=True
                )
        except _FAILURES as exc:
            if self._retry_at == 0.0:
                logger.warning(
                    "authsvc_kit.dpop_replay_cache_local", extra={"error": type(exc).__name__}
                )
            self._retry_at = self._clock() + self._retry_interval
            return True
        if self._retry_at:
            self._retry_at = 0.0
            logger.info("authsvc_kit.dpop_replay_cache_shared")
        return bool(fresh)

    async def aclose(self) -> None:
        await self._redis.aclose()
