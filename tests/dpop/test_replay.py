"""The DPoP replay cache (app/dpop/service.py): a proof's jti passes once on every replica,
through Redis or the database, and Redis failing falls back to the database, never a 500."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.db import create_engine
from app.dpop.errors import InvalidDPoPProof
from app.dpop.proof import Proof
from app.dpop.service import ReplayCache
from tests.conftest import TEST_REDIS_URL
from tests.support.redisserver import private_redis

WINDOW = 60.0


def a_proof(jkt: str = "key-a") -> Proof:
    return Proof(jkt=jkt, jti=str(uuid.uuid4()), iat=0, nonce=None)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(TEST_REDIS_URL)
    yield client
    await client.aclose()


async def test_two_replicas_sharing_the_database_accept_a_jti_once(engine: AsyncEngine) -> None:
    replica_a, replica_b = ReplayCache(engine, window=WINDOW), ReplayCache(engine, window=WINDOW)
    now = datetime.now(UTC)
    proof = a_proof()
    await replica_a.remember(proof, now)
    with pytest.raises(InvalidDPoPProof, match="already used"):
        await replica_b.remember(proof, now)
    # The same jti from another key is another proof.
    await replica_b.remember(Proof("key-b", proof.jti, 0, None), now)


async def test_concurrent_uses_of_one_jti_let_exactly_one_through(engine: AsyncEngine) -> None:
    caches = [ReplayCache(engine, window=WINDOW) for _ in range(3)]
    proof, now = a_proof(), datetime.now(UTC)

    async def use(cache: ReplayCache) -> bool:
        try:
            await cache.remember(proof, now)
        except InvalidDPoPProof:
            return False
        return True

    results = await asyncio.gather(*(use(caches[i % 3]) for i in range(12)))
    assert results.count(True) == 1


@pytest.mark.parametrize("shared", ["database", "redis"])
async def test_a_burst_of_proofs_with_replays_among_them(
    engine: AsyncEngine, redis: Redis, shared: str
) -> None:
    """Concurrent proofs are written in batches (app.core.coalesce): every fresh jti passes
    once, every replay in the same burst or a later one is refused, on two replicas."""
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    store = redis if shared == "redis" else None
    # A generous Redis timeout: the point is the batching. Under CI load the default 0.25 s
    # ran out once, and a replica that gave up on Redis checks the database alone (the
    # outage behaviour, tests/dpop/test_replay_redis_recovery.py).
    caches = [
        ReplayCache(engine, window=WINDOW, redis=store, namespace=namespace, redis_timeout=5.0)
        for _ in "ab"
    ]
    proofs, now = [a_proof() for _ in range(40)], datetime.now(UTC)

    async def use(cache: ReplayCache, proof: Proof) -> bool:
        try:
            await cache.remember(proof, now)
        except InvalidDPoPProof:
            return False
        return True

    burst = [use(caches[i % 2], proofs[i % 40]) for i in range(120)]  # each proof three times
    results = await asyncio.gather(*burst)
    assert sum(results) == 40
    assert all(sum(results[i::40]) == 1 for i in range(40))
    assert not any(await asyncio.gather(*(use(caches[0], p) for p in proofs)))


async def test_an_entry_is_kept_for_twice_the_window_then_purged(engine: AsyncEngine) -> None:
    cache = ReplayCache(engine, window=WINDOW)
    proof, now = a_proof(), datetime.now(UTC)
    await cache.remember(proof, now)
    with pytest.raises(InvalidDPoPProof):
        await cache.remember(proof, now + timedelta(seconds=2 * WINDOW - 1))
    assert await cache.purge(now + timedelta(seconds=2 * WINDOW + 1)) >= 1
    await cache.remember(proof, now + timedelta(seconds=2 * WINDOW + 1))


async def test_replicas_sharing_redis_accept_a_jti_once(engine: AsyncEngine, redis: Redis) -> None:
    namespace = f"test-{uuid.uuid4().hex[:8]}"
    replica_a = ReplayCache(engine, window=WINDOW, redis=redis, namespace=namespace)
    replica_b = ReplayCache(engine, window=WINDOW, redis=redis, namespace=namespace)
    proof, now = a_proof(), datetime.now(UTC)
    await replica_a.remember(proof, now)
    with pytest.raises(InvalidDPoPProof):
        await replica_b.remember(proof, now)
    ttl_ms = await redis.pttl(f"{namespace}:dpop-jti:" + _key_hex(proof))
    assert 0 < ttl_ms <= 2 * WINDOW * 1000


async def test_redis_down_falls_back_to_the_database_within_the_timeout(
    engine: AsyncEngine,
) -> None:
    dead = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=5)
    cache = ReplayCache(engine, window=WINDOW, redis=dead, redis_timeout=0.2)
    proof, now = a_proof(), datetime.now(UTC)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await cache.remember(proof, now)
    assert loop.time() - started < 1.0
    with pytest.raises(InvalidDPoPProof):  # the database remembered it
        await ReplayCache(engine, window=WINDOW).remember(proof, now)
    await dead.aclose()


def _key_hex(proof: Proof) -> str:
    return hashlib.sha256(f"{proof.jkt}\x00{proof.jti}".encode()).hexdigest()


async def test_a_frozen_redis_costs_at_most_its_timeout_then_the_database_decides(
    engine: AsyncEngine,
) -> None:
    with private_redis() as server:
        client = Redis.from_url(server.url)
        cache = ReplayCache(engine, window=WINDOW, redis=client, redis_timeout=0.2)
        await cache.remember(a_proof(), datetime.now(UTC))  # Redis answers
        server.freeze()
        try:
            proof, now = a_proof(), datetime.now(UTC)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await cache.remember(proof, now)  # recorded in the database instead
            assert loop.time() - started < 1.0
            started = loop.time()
            await cache.remember(a_proof(), now)  # Redis is left alone for the retry interval
            assert loop.time() - started < 0.15
            with pytest.raises(InvalidDPoPProof):
                await ReplayCache(engine, window=WINDOW).remember(proof, now)
        finally:
            server.thaw()
            await client.aclose()


async def test_the_replay_cache_table_is_unlogged_on_postgresql(postgres_url: str) -> None:
    """No WAL flush per proof (migration 0014): the check must not cost more than a refresh."""
    engine = create_engine(postgres_url)
    try:
        async with engine.connect() as conn:
            persistence = await conn.scalar(
                text("SELECT relpersistence::text FROM pg_class WHERE relname = 'dpop_seen_proofs'")
            )
    finally:
        await engine.dispose()
    assert persistence == "u"
