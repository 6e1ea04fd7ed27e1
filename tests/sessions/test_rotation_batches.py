"""Concurrent rotations share one call and one transaction (`authsvc_rotate_refresh_many`), and
sharing changes nothing else: each rotation answers as it would alone, a rotation that fails
fails by itself, and theft in a batch ends only the thief's session. Every rule of the rule
table also runs batched (tests/sessions/test_store_rules.py, "batched-postgres").

Which rotations shared a transaction is read from PostgreSQL itself: rows written in one
transaction carry its id (`xmin`).
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.db import create_engine, driver_connection
from app.sessions import repository as sessions
from app.sessions.policy import SessionPolicy
from app.sessions.store.base import Rotation, RotationRequest
from app.sessions.store.postgres import PostgresSessionStore
from app.users import repository as users
from tests.support.databases import fresh_database

POLICY = SessionPolicy(
    idle_timeout=timedelta(hours=1),
    absolute_lifetime=timedelta(hours=8),
    touch_interval=timedelta(seconds=5),
    reuse_interval=timedelta(seconds=30),
)


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(postgres_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _sessions(
    engine: AsyncEngine, count: int, now: datetime, ids: list[uuid.UUID] | None = None
) -> list[tuple[uuid.UUID, bytes]]:
    """`count` live sessions of one new user (with `ids`, those, inserted in that order), each
    with a fresh token: (session id, its hash)."""
    ids = ids or [uuid.uuid4() for _ in range(count)]
    seeded = []
    async with engine.begin() as conn:
        user_id = await users.insert_user(
            conn,
            email=f"batch-{uuid.uuid4().hex[:12]}@example.com",
            password_hash="$dummy$",
            role="user",
            now=now,
        )
        for session_id in ids:
            token_hash = secrets.token_bytes(32)
            await sessions.insert_session(
                conn,
                session_id=session_id,
                user_id=user_id,
                device_name=None,
                user_agent=None,
                ip=None,
                now=now,
                idle_expires_at=now + timedelta(minutes=10),
                absolute_expires_at=now + timedelta(hours=8),
            )
            await sessions.insert_refresh_token(
                conn,
                session_id=session_id,
                token_hash=token_hash,
                parent_id=None,
                generation=1,
                now=now,
            )
            seeded.append((session_id, token_hash))
    return seeded


def _request(
    session_id: uuid.UUID, token_hash: bytes, now: datetime, successor_id: uuid.UUID | None = None
) -> RotationRequest:
    return RotationRequest(
        session_id=session_id,
        token_hash=token_hash,
        successor_id=successor_id or uuid.uuid4(),
        successor_hash=secrets.token_bytes(32),
        now=now,
        policy=POLICY,
        ip="203.0.113.7",
        user_agent="batch-tests",
        arrived_at=now,
    )


async def _transactions_of(engine: AsyncEngine, token_ids: list[uuid.UUID]) -> int:
    """How many transactions wrote these token rows."""
    async with engine.connect() as conn:
        count = await conn.scalar(
            text("SELECT count(DISTINCT xmin::text) FROM refresh_tokens WHERE id = ANY(:ids)"),
            {"ids": token_ids},
        )
    return int(count or 0)


async def _audit_transactions(engine: AsyncEngine, session_ids: list[uuid.UUID]) -> int:
    """How many transactions wrote these sessions' audit rows."""
    async with engine.connect() as conn:
        count = await conn.scalar(
            text(
                "SELECT count(DISTINCT xmin::text) FROM audit_events WHERE session_id = ANY(:ids)"
            ),
            {"ids": session_ids},
        )
    return int(count or 0)


async def _rotate_all(store: PostgresSessionStore, requests: list[RotationRequest]) -> list[object]:
    return list(await asyncio.gather(*(store.rotate(r) for r in requests), return_exceptions=True))


def _outcome(result: object) -> str:
    assert isinstance(result, Rotation), result
    return result.outcome


async def test_concurrent_rotations_share_one_transaction(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    requests = [_request(sid, th, now) for sid, th in await _sessions(engine, 8, now)]
    results = await _rotate_all(PostgresSessionStore(engine), requests)
    assert [_outcome(r) for r in results] == ["rotated"] * 8
    assert await _transactions_of(engine, [r.successor_id for r in requests]) == 1


async def test_one_token_twice_in_a_batch_is_rotated_then_retried(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    [(sid, token_hash)] = await _sessions(engine, 1, now)
    first, again = _request(sid, token_hash, now), _request(sid, token_hash, now)
    results = await _rotate_all(PostgresSessionStore(engine), [first, again])
    assert [(r.outcome, r.generation) for r in results if isinstance(r, Rotation)] == [
        ("rotated", 2),
        ("retried", 1),
    ]
    async with engine.connect() as conn:
        successors = await conn.scalar(
            text("SELECT count(*) FROM refresh_tokens WHERE session_id = :sid AND generation = 2"),
            {"sid": sid},
        )
    assert successors == 1  # the retry made none of its own
    assert await _audit_transactions(engine, [sid]) == 1  # rotated and retried: one commit


async def test_a_failing_rotation_fails_alone(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    seeded = await _sessions(engine, 3, now)
    async with engine.connect() as conn:
        taken_id = await conn.scalar(
            text("SELECT id FROM refresh_tokens WHERE session_id = :sid"), {"sid": seeded[0][0]}
        )
    # The middle rotation's successor id is taken: its INSERT fails, and with it the batch's
    # transaction; each rotation then goes alone.
    requests = [
        _request(seeded[0][0], seeded[0][1], now),
        _request(seeded[1][0], seeded[1][1], now, successor_id=taken_id),
        _request(seeded[2][0], seeded[2][1], now),
    ]
    first, failed, last = await _rotate_all(PostgresSessionStore(engine), requests)
    assert isinstance(failed, asyncpg.UniqueViolationError)
    assert _outcome(first) == _outcome(last) == "rotated"
    assert await _transactions_of(engine, [requests[0].successor_id, requests[2].successor_id]) == 2
    async with engine.connect() as conn:
        unused = await conn.scalar(
            text("SELECT used_at IS NULL FROM refresh_tokens WHERE token_hash = :h"),
            {"h": seeded[1][1]},
        )
    assert unused  # nothing of the failed rotation was kept


async def test_theft_in_a_batch_ends_only_the_thiefs_session(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    (stolen, stolen_hash), (honest, honest_hash) = await _sessions(engine, 2, now)
    store = PostgresSessionStore(engine)
    assert (await store.rotate(_request(stolen, stolen_hash, now))).outcome == "rotated"
    later = now + timedelta(minutes=1)  # past the reuse interval
    replay, fresh = await _rotate_all(
        store, [_request(stolen, stolen_hash, later), _request(honest, honest_hash, later)]
    )
    assert (_outcome(replay), _outcome(fresh)) == ("reused", "rotated")
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id, revoked_at IS NOT NULL FROM sessions WHERE id IN (:a, :b)"),
            {"a": stolen, "b": honest},
        )
        revoked: dict[uuid.UUID, bool] = {row[0]: row[1] for row in rows}
    assert revoked == {stolen: True, honest: False}
    async with engine.connect() as conn:
        events = await conn.scalar(
            text(
                "SELECT count(DISTINCT xmin::text) FROM audit_events WHERE session_id IN (:a, :b)"
                " AND event IN ('refresh.reuse_detected', 'refresh.rotated') AND created_at = :t"
            ),
            {"a": stolen, "b": honest, "t": later},
        )
        notices = await conn.scalar(
            text("SELECT count(*) FROM outbox_messages WHERE idempotency_key LIKE :k"),
            {"k": f"backchannel_logout:{stolen}:%"},
        )
    assert events == 1  # the theft and the honest rotation: one commit
    assert notices == 0  # no back-channel clients configured in this store


async def test_a_session_another_transaction_holds_is_skipped_and_waits_alone(
    engine: AsyncEngine,
) -> None:
    """The batch takes no lock it would have to wait for: the other sessions rotate at once,
    and the held one rotates once its holder lets go."""
    now = datetime.now(UTC)
    (held, held_hash), (free, free_hash) = await _sessions(engine, 2, now)
    store = PostgresSessionStore(engine)
    requests = [_request(held, held_hash, now), _request(free, free_hash, now)]
    async with driver_connection(engine) as holder:
        holding = holder.transaction()
        await holding.start()
        await holder.execute("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", held)
        waiting, rotating = (asyncio.ensure_future(store.rotate(r)) for r in requests)
        done, _ = await asyncio.wait(
            {waiting, rotating}, timeout=5, return_when=asyncio.FIRST_COMPLETED
        )
        assert done == {rotating}  # at once, while the held session's rotation waits alone
        assert _outcome(rotating.result()) == "rotated"
        await holding.rollback()
    assert _outcome(await asyncio.wait_for(waiting, timeout=5)) == "rotated"


async def test_a_batch_finds_its_tokens_by_index_as_the_table_grows(
    postgres_url: str, tmp_path: Path
) -> None:
    """A new deployment: the token table is tiny while a pooled connection runs its first
    batches, and PL/pgSQL keeps the plans it made then. The batch must still find its tokens by
    index once the table has grown. (A join of the unnested arrays did not: planned as a hash
    join over a sequential scan while the table was small, every batch then read the whole
    table, and a batch's cost grew with it: `python -m bench.cpu refresh` measured 0.44, 0.72,
    0.86 ms of PostgreSQL per refresh over three rounds; by index, 0.32-0.33.)"""
    async with fresh_database("postgres", tmp_path) as url:
        engine = create_engine(url)
        try:
            await _batches_while_the_table_grows(engine)
        finally:
            await engine.dispose()


async def _batches_while_the_table_grows(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    chains = [[sid, token_hash] for sid, token_hash in await _sessions(engine, 2, now)]
    plans: list[str] = []
    async with driver_connection(engine) as conn:
        conn.add_log_listener(lambda _, message: plans.append(message.message))
        await conn.execute(
            "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
            " SET auto_explain.log_nested_statements = on; SET client_min_messages = log"
        )
        for batch in range(16):
            if batch == 8:  # the table grows, faster than autovacuum analyzes it
                await conn.execute(
                    "INSERT INTO refresh_tokens (id, session_id, generation, token_hash,"
                    " created_at) SELECT gen_random_uuid(), $1, g, sha256(CAST(g::text AS"
                    " bytea)), now() FROM generate_series(100, 20100) g",
                    chains[0][0],
                )
                plans.clear()
            successors = [secrets.token_bytes(32) for _ in chains]
            rows = await conn.fetch(
                "SELECT ord, outcome FROM authsvc_rotate_refresh_many($1, $2, $3, $4, $5, 3600,"
                " 5, 30, $6, $7, $5, $8, '{}', $9)",
                [sid for sid, _ in chains],
                [token_hash for _, token_hash in chains],
                [uuid.uuid4() for _ in chains],
                successors,
                [now for _ in chains],
                [None for _ in chains],
                [None for _ in chains],
                [True for _ in chains],
                [None for _ in chains],
            )
            assert [row["outcome"] for row in rows] == ["rotated", "rotated"]
            for chain, successor in zip(chains, successors, strict=True):
                chain[1] = successor
    assert plans, "auto_explain logged no plan"
    scans = [plan for plan in plans if "Seq Scan on refresh_tokens" in plan]
    assert scans == [], scans[0]
