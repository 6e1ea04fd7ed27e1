"""Issue 3 rule 9: dead sessions and old tokens are purged; lookups stay index-backed."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app.core.db import table_of
from app.sessions.models import RefreshToken, Session
from tests.conftest import Harness, bearer, make_settings, start_harness

_tokens = table_of(RefreshToken)
_sessions = table_of(Session)


async def _prune(h: Harness) -> tuple[int, int]:
    return await h.ctx.sessions.prune(h.ctx.settings.refresh_token_retention)


async def _count(h: Harness, session_id: str) -> tuple[int, int]:
    sid = uuid.UUID(session_id)
    async with h.ctx.engine.connect() as conn:
        sessions = await conn.scalar(select(func.count()).where(_sessions.c.id == sid))
        tokens = await conn.scalar(select(func.count()).where(_tokens.c.session_id == sid))
    return int(sessions or 0), int(tokens or 0)


async def test_prune_removes_dead_sessions_and_old_used_tokens(harness: Harness) -> None:
    h = harness
    email = await h.create_user()
    revoked = await h.login(email)
    await h.client.post("/auth/logout", headers=bearer(revoked["access_token"]))
    idle = await h.login(email)
    live = await h.login(email)
    chain = [live["refresh_token"]]
    for _ in range(4):
        chain.append((await h.refresh(chain[-1])).json()["refresh_token"])
    h.clock.advance(1800)
    chain.append((await h.refresh(chain[-1])).json()["refresh_token"])
    h.clock.advance(1801)  # `idle` is now past its idle deadline; `live` is not
    sessions_deleted, _ = await _prune(h)

    assert sessions_deleted >= 2
    assert await _count(h, revoked["session"]["id"]) == (0, 0)
    assert await _count(h, idle["session"]["id"]) == (0, 0)
    assert await _count(h, live["session"]["id"]) == (1, 6)
    assert (await h.refresh(chain[-1])).status_code == 200


async def test_prune_keeps_live_chain_within_retention(database_url: str) -> None:
    settings = make_settings(
        database_url,
        session_absolute_lifetime=30 * 86400,
        refresh_token_retention=86400,
    )
    async for h in start_harness(settings):
        email = await h.create_user()
        live = await h.login(email)
        chain = [live["refresh_token"]]
        for _ in range(60):  # every 50 minutes for two days and a half
            h.clock.advance(3000)
            chain.append((await h.refresh(chain[-1])).json()["refresh_token"])
        _, tokens_deleted = await _prune(h)  # other tests' rows may go too
        # Tokens used more than a day ago are gone; the last day's chain stays.
        sessions, remaining = await _count(h, live["session"]["id"])
        assert sessions == 1
        assert tokens_deleted >= 61 - remaining
        assert 28 <= remaining <= 30
        # The newest token still rotates, a retry of its parent still works...
        parent, newest = chain[-2], chain[-1]
        assert (await h.refresh(newest)).status_code == 200
        assert (await h.refresh(newest)).status_code == 200  # retry inside the interval
        # ...and a replay of a token still inside retention (and past the reuse interval of its
        # first use, so no delayed duplicate) is caught as theft.
        h.clock.advance(31)
        replay = await h.refresh(parent)
        assert replay.json()["error"]["code"] == "refresh_token_reused"


async def test_periodic_prune_runs_by_itself(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url, prune_interval=1)):
        tokens = await h.login(await h.create_user())
        await h.client.post("/auth/logout", headers=bearer(tokens["access_token"]))
        for _ in range(50):
            if await _count(h, tokens["session"]["id"]) == (0, 0):
                break
            await asyncio.sleep(0.1)
        assert await _count(h, tokens["session"]["id"]) == (0, 0)


async def test_refresh_token_lookup_uses_the_index(postgres_url: str) -> None:
    async for h in start_harness(make_settings(postgres_url)):
        tokens = await h.login(await h.create_user())
        token_hash = h.ctx.refresh_codec.hash(tokens["refresh_token"])
        session_id = tokens["session"]["id"]
    # The seeding is the test's, not the app's, so it runs on an engine without the app's
    # statement timeouts (a share of the request bound): a loaded CI machine once took longer.
    engine = create_async_engine(postgres_url)
    try:
        plan = await _plan_with_many_tokens(engine, session_id, token_hash)
    finally:
        await engine.dispose()
    assert "Index" in plan, plan
    assert "token_hash" in plan, plan


async def _plan_with_many_tokens(engine: AsyncEngine, session_id: str, token_hash: bytes) -> str:
    async with engine.begin() as conn:
        # 20,000 extra rows in one throwaway session so the planner has a real choice.
        await conn.execute(
            text(
                "INSERT INTO refresh_tokens (id, session_id, generation, token_hash, created_at) "
                "SELECT gen_random_uuid(), CAST(:sid AS uuid), g, "
                "sha256(CAST(g::text || :salt AS bytea)), now() FROM generate_series(1, 20000) g"
            ),
            {"sid": session_id, "salt": uuid.uuid4().hex},
        )
        await conn.execute(text("ANALYZE refresh_tokens"))
        plan = "\n".join(
            row[0]
            for row in await conn.execute(
                text("EXPLAIN SELECT id FROM refresh_tokens WHERE token_hash = :h"),
                {"h": token_hash},
            )
        )
        await conn.rollback()
    return plan


async def test_default_retention_catches_theft_for_the_whole_session(database_url: str) -> None:
    settings = make_settings(
        database_url, session_idle_timeout=86400, session_absolute_lifetime=30 * 86400
    )
    async for h in start_harness(settings):
        tokens = await h.login(await h.create_user())
        stolen, current = tokens["refresh_token"], tokens["refresh_token"]
        for _ in range(12):  # the thief refreshes every 20 hours for 10 days; prunes run
            h.clock.advance(20 * 3600)
            current = (await h.refresh(current)).json()["refresh_token"]
            await _prune(h)
        replay = await h.refresh(stolen)
        assert replay.json()["error"]["code"] == "refresh_token_reused"
        assert (await h.refresh(current)).json()["error"]["code"] == "session_revoked"
