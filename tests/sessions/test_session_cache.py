"""The per-process session cache: faster checks, bounded staleness, never a false rejection."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
from sqlalchemy import event, update

from app.core.db import table_of
from app.sessions.models import Session
from tests.conftest import PASSWORD, bearer, make_settings, start_harness
from tests.support.servers import started_together, uvicorn_server

CACHED = {"session_cache_ttl": 0.5}


async def test_own_logout_is_seen_at_once(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url, **CACHED)):
        tokens = await h.login(await h.create_user())
        assert (
            await h.client.get("/auth/me", headers=bearer(tokens["access_token"]))
        ).status_code == 200
        await h.client.post("/auth/logout", headers=bearer(tokens["access_token"]))
        me = await h.client.get("/auth/me", headers=bearer(tokens["access_token"]))
        assert me.json()["error"]["code"] == "session_revoked"


async def test_revocation_elsewhere_is_seen_within_the_ttl(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url, **CACHED)):
        tokens = await h.login(await h.create_user())
        headers = bearer(tokens["access_token"])
        assert (await h.client.get("/auth/me", headers=headers)).status_code == 200
        sessions = table_of(Session)
        async with h.ctx.engine.begin() as conn:  # as another replica would
            await conn.execute(
                update(sessions)
                .where(sessions.c.id == uuid.UUID(tokens["session"]["id"]))
                .values(revoked_at=h.clock.now(), revoke_reason="elsewhere")
            )
        started = time.monotonic()
        while (await h.client.get("/auth/me", headers=headers)).status_code == 200:
            assert time.monotonic() - started < 1.0, "stale for more than a second"
            await asyncio.sleep(0.05)


async def test_a_stale_cached_deadline_never_rejects(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url, **CACHED)):
        tokens = await h.login(await h.create_user())
        assert (
            await h.client.get("/auth/me", headers=bearer(tokens["access_token"]))
        ).status_code == 200
        h.clock.advance(3500)
        refreshed = (await h.refresh(tokens["refresh_token"])).json()  # slides in the database
        h.clock.advance(200)  # past the idle deadline the cache remembers, not the real one
        me = await h.client.get("/auth/me", headers=bearer(refreshed["access_token"]))
        assert me.status_code == 200, me.text


async def test_row_updates_per_thousand_verifies_over_fifty_sessions(postgres_url: str) -> None:
    """Sliding is coalesced: 1,000 verify requests spread over 50 busy sessions write each
    session row at most once per touch interval."""
    async for h in start_harness(make_settings(postgres_url, **CACHED)):
        email = await h.create_user()
        logins = await asyncio.gather(*(h.login(email) for _ in range(50)))
        h.clock.advance(10)  # every session is now due for one slide
        updated_rows = 0

        def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            nonlocal updated_rows
            if statement.lstrip().upper().startswith("UPDATE SESSIONS"):
                updated_rows += max(cursor.rowcount, 0)

        event.listen(h.ctx.engine.sync_engine, "after_cursor_execute", count)
        try:
            for round_ in range(20):
                responses = await asyncio.gather(
                    *(
                        h.client.get("/auth/verify", headers=bearer(t["access_token"]))
                        for t in logins
                    )
                )
                assert {r.status_code for r in responses} == {200}, round_
        finally:
            event.remove(h.ctx.engine.sync_engine, "after_cursor_execute", count)
        assert updated_rows <= 60, updated_rows
        assert updated_rows >= 50  # and every session did slide


async def test_replica_sees_logout_within_a_second_with_cache(postgres_url: str) -> None:
    async for h in start_harness(make_settings(postgres_url)):
        email = await h.create_user()
    env = {"SESSION_CACHE_TTL": "0.5"}
    with started_together(
        uvicorn_server(postgres_url, env=env), uvicorn_server(postgres_url, env=env)
    ) as [(a, _), (b, _)]:
        async with httpx.AsyncClient(timeout=10) as client:
            login = await client.post(
                f"{a}/auth/login", json={"email": email, "password": PASSWORD}
            )
            headers = bearer(login.json()["access_token"])
            assert (await client.get(f"{b}/auth/verify", headers=headers)).status_code == 200
            assert (await client.post(f"{a}/auth/logout", headers=headers)).status_code == 204
            assert (await client.get(f"{a}/auth/verify", headers=headers)).status_code == 401
            started = time.monotonic()
            while (await client.get(f"{b}/auth/verify", headers=headers)).status_code == 200:
                assert time.monotonic() - started < 1.0
                await asyncio.sleep(0.05)


async def test_own_logout_is_seen_at_once_even_when_it_slides(database_url: str) -> None:
    """A logout is an ordinary 2xx request, so the middleware slides its session after the
    response: that slide must not put the revoked session back into this process's cache."""
    settings = make_settings(database_url, session_cache_ttl=1.0, session_touch_interval=5)
    async for h in start_harness(settings):
        email = await h.create_user()
        tokens = await h.login(email)
        headers = bearer(tokens["access_token"])
        h.clock.advance(60)  # the stored idle deadline now lags by more than the interval
        assert (await h.client.get("/auth/me", headers=headers)).status_code == 200
        h.clock.advance(60)
        assert (await h.client.post("/auth/logout", headers=headers)).status_code == 204
        after = await h.client.get("/auth/me", headers=headers)
        assert after.status_code == 401
        assert after.json()["error"]["code"] == "session_revoked"
