"""Issue 3: rotation that never logs a real user out and always catches a thief."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import func, select

from app.audit.models import AuditEvent
from app.core.db import table_of
from app.sessions.models import RefreshToken, Session
from tests.conftest import Harness, bearer, error_code, make_settings, start_harness

_tokens = table_of(RefreshToken)
_sessions = table_of(Session)
_audit = table_of(AuditEvent)


async def _session_row(h: Harness, session_id: str) -> Any:
    async with h.ctx.engine.connect() as conn:
        return (
            await conn.execute(select(_sessions).where(_sessions.c.id == uuid.UUID(session_id)))
        ).one()


async def _token_rows(h: Harness, session_id: str) -> list[Any]:
    async with h.ctx.engine.connect() as conn:
        rows = await conn.execute(
            select(_tokens)
            .where(_tokens.c.session_id == uuid.UUID(session_id))
            .order_by(_tokens.c.generation)
        )
        return list(rows)


async def _superseded_events(h: Harness, session_id: str) -> list[Any]:
    async with h.ctx.engine.connect() as conn:
        rows = await conn.execute(
            select(_audit.c.details)
            .where(
                _audit.c.session_id == uuid.UUID(session_id),
                _audit.c.event == "refresh.superseded",
            )
            .order_by(_audit.c.id)
        )
        return [row[0] for row in rows]


async def _reuse_classes(h: Harness, session_id: str) -> list[str]:
    async with h.ctx.engine.connect() as conn:
        rows = await conn.execute(
            select(_audit.c.details)
            .where(
                _audit.c.session_id == uuid.UUID(session_id),
                _audit.c.event.in_(["refresh.retried", "refresh.reuse_detected"]),
            )
            .order_by(_audit.c.id)
        )
        return [row[0]["reuse_class"] for row in rows]


async def test_rotation_marks_the_presented_token_used(harness: Harness) -> None:
    tokens = await harness.login(await harness.create_user())
    r2 = (await harness.refresh(tokens["refresh_token"])).json()
    rows = await _token_rows(harness, tokens["session"]["id"])
    assert [r.generation for r in rows] == [1, 2]
    assert rows[0].used_at is not None
    assert rows[1].used_at is None
    assert rows[1].parent_id == rows[0].id
    # Only HMACs are stored, never the tokens themselves.
    stored = {bytes(r.token_hash) for r in rows}
    assert tokens["refresh_token"].encode() not in stored
    assert all(len(h) == 32 for h in stored)
    assert r2["refresh_token"] != tokens["refresh_token"]


async def test_retry_inside_interval_returns_the_same_successor(harness: Harness) -> None:
    tokens = await harness.login(await harness.create_user())
    first = await harness.refresh(tokens["refresh_token"])
    harness.clock.advance(29)
    retry = await harness.refresh(tokens["refresh_token"])
    assert retry.status_code == 200
    assert retry.json()["refresh_token"] == first.json()["refresh_token"]
    assert retry.json()["access_token"] != first.json()["access_token"]
    assert len(await _token_rows(harness, tokens["session"]["id"])) == 2
    assert (await _session_row(harness, tokens["session"]["id"])).revoked_at is None
    assert await _reuse_classes(harness, tokens["session"]["id"]) == ["retry_inside_interval"]
    # The successor still works normally afterwards.
    assert (await harness.refresh(first.json()["refresh_token"])).status_code == 200


async def test_reuse_interval_boundary(harness: Harness) -> None:
    tokens = await harness.login(await harness.create_user())
    first = (await harness.refresh(tokens["refresh_token"])).json()
    harness.clock.advance(30)  # exactly the interval: still a retry
    retry = await harness.refresh(tokens["refresh_token"])
    assert retry.json()["refresh_token"] == first["refresh_token"]
    harness.clock.advance(1)  # one second later: theft
    assert error_code(await harness.refresh(tokens["refresh_token"])) == "refresh_token_reused"


async def test_replay_after_interval_is_theft_and_revokes_everything(harness: Harness) -> None:
    tokens = await harness.login(await harness.create_user())
    r2 = (await harness.refresh(tokens["refresh_token"])).json()
    harness.clock.advance(31)
    replay = await harness.refresh(tokens["refresh_token"])
    assert replay.status_code == 401
    assert error_code(replay) == "refresh_token_reused"
    session = await _session_row(harness, tokens["session"]["id"])
    assert session.revoked_at is not None
    assert session.revoke_reason == "refresh_token_reused"
    # The newest refresh token and every access token of the session stop working at once.
    assert error_code(await harness.refresh(r2["refresh_token"])) == "session_revoked"
    for access in (tokens["access_token"], r2["access_token"]):
        me = await harness.client.get("/auth/me", headers=bearer(access))
        assert error_code(me) == "session_revoked"
    assert await _reuse_classes(harness, tokens["session"]["id"]) == ["stale_replay"]


async def test_ancestor_replay_inside_the_interval_is_superseded_not_theft(
    harness: Harness,
) -> None:
    """A delayed duplicate (a stalled replica answering R1 after R1 -> R2 -> R3 elsewhere) is
    refused with its own code and leaves the session alone."""
    tokens = await harness.login(await harness.create_user())
    r2 = (await harness.refresh(tokens["refresh_token"])).json()
    r3 = (await harness.refresh(r2["refresh_token"])).json()
    harness.clock.advance(30)  # R1 was first used exactly one reuse interval ago
    replay = await harness.refresh(tokens["refresh_token"])
    assert replay.status_code == 401
    assert error_code(replay) == "refresh_token_superseded"
    assert "refresh_token_superseded" in replay.headers["www-authenticate"]
    session = await _session_row(harness, tokens["session"]["id"])
    assert (session.revoked_at, session.revoke_reason) == (None, None)
    me = await harness.client.get("/auth/me", headers=bearer(r3["access_token"]))
    assert me.status_code == 200
    assert (await harness.refresh(r3["refresh_token"])).status_code == 200
    assert len(await _token_rows(harness, tokens["session"]["id"])) == 4  # nothing issued
    assert await _superseded_events(harness, tokens["session"]["id"]) == [
        {"reuse_class": "ancestor_inside_interval", "generation": 1}
    ]


async def test_ancestor_replay_after_the_interval_is_theft(harness: Harness) -> None:
    tokens = await harness.login(await harness.create_user())
    r2 = (await harness.refresh(tokens["refresh_token"])).json()
    harness.clock.advance(20)
    r3 = (await harness.refresh(r2["refresh_token"])).json()
    harness.clock.advance(11)  # R1 first used 31 s ago, R2 11 s ago
    assert error_code(await harness.refresh(tokens["refresh_token"])) == "refresh_token_reused"
    assert error_code(await harness.refresh(r3["refresh_token"])) == "session_revoked"
    assert await _reuse_classes(harness, tokens["session"]["id"]) == ["ancestor_replay"]


async def _held_refresh(
    h: Harness, refresh_token: str, arrived: asyncio.Event, release: asyncio.Event
) -> httpx.Response:
    """A refresh whose body reaches the app only on `release`: it arrives (the request
    envelope stamps it) and then waits, as a request waits in a busy worker."""

    async def body() -> AsyncIterator[bytes]:
        arrived.set()  # the app is reading the body: the envelope has seen the request
        await release.wait()
        yield json.dumps({"refresh_token": refresh_token}).encode()

    return await h.client.post(
        "/auth/refresh", content=body(), headers={"Content-Type": "application/json"}
    )


async def _refresh_arriving_then_waiting(h: Harness, refresh_token: str, wait: int) -> Any:
    arrived, release = asyncio.Event(), asyncio.Event()
    request = asyncio.create_task(_held_refresh(h, refresh_token, arrived, release))
    await arrived.wait()
    h.clock.advance(wait)
    release.set()
    return await request


async def test_reuse_interval_is_measured_from_arrival(harness: Harness) -> None:
    """A retry that arrived inside the interval and waited in the worker past its end is still
    a retry; the wait is credited up to one interval, no more (a slow body must not stretch
    the window an attacker gets)."""
    tokens = await harness.login(await harness.create_user())
    first = (await harness.refresh(tokens["refresh_token"])).json()
    harness.clock.advance(29)
    late = await _refresh_arriving_then_waiting(harness, tokens["refresh_token"], wait=5)
    assert late.status_code == 200, late.text  # arrived 29 s after the first use, handled at 34
    assert late.json()["refresh_token"] == first["refresh_token"]
    # Arrived at 34 s, handled at 66 s: the wait is credited 30 s, so measured from 36 s.
    stale = await _refresh_arriving_then_waiting(harness, tokens["refresh_token"], wait=32)
    assert error_code(stale) == "refresh_token_reused"


async def test_attacker_first_then_user_revokes_attackers_branch(harness: Harness) -> None:
    tokens = await harness.login(await harness.create_user())
    stolen = tokens["refresh_token"]
    attacker = (await harness.refresh(stolen)).json()  # attacker rotates R1 -> R2
    harness.clock.advance(120)
    user = await harness.refresh(stolen)  # the real user comes back with R1
    assert error_code(user) == "refresh_token_reused"
    assert error_code(await harness.refresh(attacker["refresh_token"])) == "session_revoked"
    me = await harness.client.get("/auth/me", headers=bearer(attacker["access_token"]))
    assert error_code(me) == "session_revoked"


async def test_refresh_after_idle_deadline_issues_nothing(harness: Harness) -> None:
    tokens = await harness.login(await harness.create_user())
    harness.clock.advance(3600)
    response = await harness.refresh(tokens["refresh_token"])
    assert error_code(response) == "session_expired"
    rows = await _token_rows(harness, tokens["session"]["id"])
    assert len(rows) == 1
    assert rows[0].used_at is None


async def test_logout_all_and_logout_stop_refresh(harness: Harness) -> None:
    email = await harness.create_user()
    a = await harness.login(email)
    b = await harness.login(email)
    await harness.client.post("/auth/logout", headers=bearer(a["access_token"]))
    assert error_code(await harness.refresh(a["refresh_token"])) == "session_revoked"
    await harness.client.post("/auth/logout-all", headers=bearer(b["access_token"]))
    assert error_code(await harness.refresh(b["refresh_token"])) == "session_revoked"


# --- Concurrency: real PostgreSQL connections racing on the same row -------------------------


async def _race(h: Harness, token: str, n: int) -> list[Any]:
    return list(await asyncio.gather(*(h.refresh(token) for _ in range(n))))


async def test_twenty_parallel_refreshes_share_one_successor(pg_harness: Harness) -> None:
    h = pg_harness
    tokens = await h.login(await h.create_user())
    responses = await _race(h, tokens["refresh_token"], 20)
    assert [r.status_code for r in responses] == [200] * 20
    successors = {r.json()["refresh_token"] for r in responses}
    assert len(successors) == 1
    rows = await _token_rows(h, tokens["session"]["id"])
    assert len(rows) == 2  # exactly one successor in the database
    assert (await _session_row(h, tokens["session"]["id"])).revoked_at is None
    # ...and that successor rotates normally.
    assert (await h.refresh(successors.pop())).status_code == 200


async def test_two_hundred_sessions_racing_at_once(postgres_url: str) -> None:
    # 4,000 requests at once queue for 10 connections: give the queue time instead of the
    # production default of a fast 503 after DB_POOL_TIMEOUT.
    async for h in start_harness(make_settings(postgres_url, db_pool_timeout=120)):
        await _two_hundred_sessions(h)


async def _two_hundred_sessions(h: Harness) -> None:
    email = await h.create_user()
    logins = await asyncio.gather(*(h.login(email) for _ in range(200)))
    results = await asyncio.gather(*(_race(h, t["refresh_token"], 20) for t in logins))
    for responses in results:
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses][:3]
        assert len({r.json()["refresh_token"] for r in responses}) == 1
    session_ids = [uuid.UUID(t["session"]["id"]) for t in logins]
    async with h.ctx.engine.connect() as conn:
        per_session = await conn.execute(
            select(_tokens.c.session_id, func.count())
            .where(_tokens.c.session_id.in_(session_ids))
            .group_by(_tokens.c.session_id)
        )
        assert {count for _, count in per_session} == {2}
        revoked = await conn.execute(
            select(func.count()).where(
                _sessions.c.id.in_(session_ids), _sessions.c.revoked_at.is_not(None)
            )
        )
        assert revoked.scalar_one() == 0


async def test_race_then_theft_is_still_caught(pg_harness: Harness) -> None:
    h = pg_harness
    tokens = await h.login(await h.create_user())
    await _race(h, tokens["refresh_token"], 10)
    h.clock.advance(31)
    assert error_code(await h.refresh(tokens["refresh_token"])) == "refresh_token_reused"


async def test_theft_racing_the_thiefs_refresh_never_500s(pg_harness: Harness) -> None:
    """Victim replays R1 (theft) while the attacker rotates R2: no deadlock, no lost revocation."""
    h = pg_harness
    email = await h.create_user()
    for _ in range(20):
        tokens = await h.login(email)
        r2 = (await h.refresh(tokens["refresh_token"])).json()
        h.clock.advance(31)
        attacker, victim = await asyncio.gather(
            h.refresh(r2["refresh_token"]), h.refresh(tokens["refresh_token"])
        )
        assert attacker.status_code in {200, 401}, attacker.text
        assert error_code(victim) == "refresh_token_reused"
        assert (await _session_row(h, tokens["session"]["id"])).revoked_at is not None
        if attacker.status_code == 200:
            late = await h.refresh(attacker.json()["refresh_token"])
            assert error_code(late) == "session_revoked"


async def test_logout_racing_refresh_never_500s(pg_harness: Harness) -> None:
    h = pg_harness
    email = await h.create_user()
    for _ in range(20):
        tokens = await h.login(email)
        logout, refreshed = await asyncio.gather(
            h.client.post("/auth/logout", headers=bearer(tokens["access_token"])),
            h.refresh(tokens["refresh_token"]),
        )
        assert logout.status_code == 204, logout.text
        assert refreshed.status_code in {200, 401}, refreshed.text
        assert (await _session_row(h, tokens["session"]["id"])).revoked_at is not None
        if refreshed.status_code == 200:
            assert (
                error_code(await h.refresh(refreshed.json()["refresh_token"])) == "session_revoked"
            )


# --- The per-session refresh limit counts rotations, not retries ------------------------------


async def test_parallel_retries_do_not_use_up_the_session_refresh_limit(
    database_url: str,
) -> None:
    """50 parallel sends of one token: one rotation, 49 retries with the same successor, and
    only the rotation counts toward RATE_LIMIT_REFRESH_SESSION, so the successor refreshes at
    once. A retry of a rotation already counted is answered even when the limit is used up."""
    settings = make_settings(
        database_url, rate_limits_enabled=True, rate_limit_refresh_session="3/minute"
    )
    async for h in start_harness(settings):
        tokens = await h.login(await h.create_user())
        responses = await _race(h, tokens["refresh_token"], 50)
        assert [r.status_code for r in responses] == [200] * 50, [r.text for r in responses][:3]
        successors = {r.json()["refresh_token"] for r in responses}
        assert len(successors) == 1
        second = await h.refresh(successors.pop())
        assert second.status_code == 200, second.text
        third = await h.refresh(second.json()["refresh_token"])
        assert third.status_code == 200, third.text
        # Three rotations: the limit is used up for a fourth...
        limited = await h.refresh(third.json()["refresh_token"])
        assert error_code(limited) == "rate_limited"
        # ...but not for a retry of the third, which was counted already.
        retry = await h.refresh(second.json()["refresh_token"])
        assert retry.status_code == 200, retry.text
        assert retry.json()["refresh_token"] == third.json()["refresh_token"]
