"""Issue 3: rotation that never logs a real user out and always catches a thief."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

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


async def test_ancestor_replay_is_theft_even_inside_the_interval(harness: Harness) -> None:
    tokens = await harness.login(await harness.create_user())
    r2 = (await harness.refresh(tokens["refresh_token"])).json()
    r3 = (await harness.refresh(r2["refresh_token"])).json()
    replay = await harness.refresh(tokens["refresh_token"])  # R1, two generations old, at once
    assert error_code(replay) == "refresh_token_reused"
    assert error_code(await harness.refresh(r3["refresh_token"])) == "session_revoked"
    assert await _reuse_classes(harness, tokens["session"]["id"]) == ["ancestor_replay"]


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
