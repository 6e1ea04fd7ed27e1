"""Revocation push across replicas: two `python -m app serve` processes on one PostgreSQL
database. A session is cached on B just before A revokes it, with SESSION_CACHE_TTL at its
maximum (1 s): without the push, B would accept it for about a second; with it, B refuses
within milliseconds. With the listener's connection killed, the TTL still bounds it, and the
listener comes back."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.db import create_engine
from app.sessions.cache import SessionStateCache
from app.sessions.policy import SessionState
from app.sessions.push import CHANNEL, CLEAR_ALL, MAX_IDS_PER_PAYLOAD, apply_payload, payload_for
from tests.conftest import PASSWORD, bearer, make_settings, start_harness
from tests.support.servers import started_together, uvicorn_server

TTL = 1.0
ENV = {"SESSION_CACHE_TTL": str(TTL), "REFRESH_REUSE_INTERVAL": "0"}
TRIALS = 20
POLL = 0.005


async def _engine(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(url, pool_size=1, pool_timeout=5)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _listener_backend(engine: AsyncEngine, pid: int, within: float = 15) -> int:
    """The backend pid of server `pid`'s revocation listener, once it is listening."""
    deadline = time.monotonic() + within
    while True:
        async with engine.connect() as conn:
            backend = await conn.scalar(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = :name "
                    "AND (query ILIKE 'LISTEN%' OR query = 'SELECT 1')"
                ),
                {"name": f"authsvc-revocations-{pid}"},
            )
        if backend is not None:
            return int(backend)
        assert time.monotonic() < deadline, f"no revocation listener for server {pid}"
        await asyncio.sleep(0.05)


async def _refused_after(
    client: httpx.AsyncClient, b: str, headers: dict[str, str], limit: float
) -> float:
    """Seconds until B refuses the access token (polling every 5 ms)."""
    started = time.monotonic()
    while (await client.get(f"{b}/auth/verify", headers=headers)).status_code == 200:
        elapsed = time.monotonic() - started
        assert elapsed < limit, f"B still accepts a revoked session after {elapsed:.3f} s"
        await asyncio.sleep(POLL)
    return time.monotonic() - started


Revoke = Callable[[httpx.AsyncClient, str, dict[str, str], str], Awaitable[None]]


async def _logout(client: httpx.AsyncClient, a: str, headers: dict[str, str], _rt: str) -> None:
    assert (await client.post(f"{a}/auth/logout", headers=headers)).status_code == 204


async def _replay(client: httpx.AsyncClient, a: str, _headers: dict[str, str], rt: str) -> None:
    """Theft detection: the rotation function revokes the session (outcome `reused`)."""
    assert (await client.post(f"{a}/auth/refresh", json={"refresh_token": rt})).status_code == 200
    replay = await client.post(f"{a}/auth/refresh", json={"refresh_token": rt})
    assert replay.json()["error"]["code"] == "refresh_token_reused", replay.text


async def _trial(
    client: httpx.AsyncClient, a: str, b: str, email: str, revoke: Revoke, limit: float
) -> float:
    login = await client.post(f"{a}/auth/login", json={"email": email, "password": PASSWORD})
    body = login.json()
    headers = bearer(body["access_token"])
    # B reads the session now and caches it for TTL: only the push can end that sooner.
    assert (await client.get(f"{b}/auth/verify", headers=headers)).status_code == 200
    await revoke(client, a, headers, body["refresh_token"])
    return await _refused_after(client, b, headers, limit)


def _figures(delays: list[float]) -> str:
    ms = sorted(d * 1000 for d in delays)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"median {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms"


async def test_a_revocation_reaches_the_other_replica_within_50_ms(postgres_url: str) -> None:
    async for h in start_harness(make_settings(postgres_url)):
        email = await h.create_user()
    with started_together(
        uvicorn_server(postgres_url, env=ENV, serve=True),
        uvicorn_server(postgres_url, env=ENV, serve=True),
    ) as [(a, _), (b, b_process)]:
        async for engine in _engine(postgres_url):
            await _listener_backend(engine, b_process.pid)
        async with httpx.AsyncClient(timeout=10) as client:
            logouts = [await _trial(client, a, b, email, _logout, TTL) for _ in range(TRIALS)]
            thefts = [await _trial(client, a, b, email, _replay, TTL) for _ in range(5)]
    print(f"\nrevocation push, logout on A -> B refuses: {_figures(logouts)} ({TRIALS} trials)")
    print(f"revocation push, reuse detected on A -> B refuses: {_figures(thefts)} (5 trials)")
    assert statistics.median(logouts) <= 0.050, _figures(logouts)
    assert statistics.median(thefts) <= 0.050, _figures(thefts)


async def test_with_the_listener_killed_the_ttl_holds_and_it_reconnects(postgres_url: str) -> None:
    async for h in start_harness(make_settings(postgres_url)):
        email = await h.create_user()
    with started_together(
        uvicorn_server(postgres_url, env=ENV, serve=True),
        uvicorn_server(postgres_url, env=ENV, serve=True),
    ) as [(a, _), (b, b_process)]:
        async with httpx.AsyncClient(timeout=10) as client:
            async for engine in _engine(postgres_url):
                killed = await _listener_backend(engine, b_process.pid)
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": killed})
                # Down or already back: either way B refuses within the TTL.
                fallback = await _trial(client, a, b, email, _logout, TTL + 0.3)
                back = await _listener_backend(engine, b_process.pid)
                assert back != killed
                pushed = await _trial(client, a, b, email, _logout, TTL)
    print(
        f"\nlistener killed: refused after {fallback * 1000:.0f} ms; after reconnect "
        f"{pushed * 1000:.0f} ms"
    )
    assert pushed <= 0.25  # pushed again: the session was cached on B for a whole TTL


def _state(session_id: uuid.UUID) -> SessionState:
    now = datetime.now(UTC)
    return SessionState(
        id=session_id,
        user_id=uuid.uuid4(),
        email="a@example.com",
        role="user",
        user_active=True,
        created_at=now,
        idle_expires_at=now + timedelta(hours=1),
        absolute_expires_at=now + timedelta(hours=2),
        revoked_at=None,
    )


def test_a_notification_drops_what_it_names_and_refuses_stale_puts() -> None:
    cache = SessionStateCache(30)
    kept, dropped = uuid.uuid4(), uuid.uuid4()
    epoch = cache.epoch  # a read of `dropped` in flight while the revocation commits
    cache.put(_state(kept), read_at=epoch)
    apply_payload(cache, payload_for([dropped]))
    cache.put(_state(dropped), read_at=epoch)
    assert cache.get(dropped) is None
    assert cache.get(kept) is not None


def test_a_big_fan_out_or_an_unreadable_payload_clears_everything() -> None:
    many = [uuid.uuid4() for _ in range(MAX_IDS_PER_PAYLOAD + 1)]
    assert payload_for(many) == CLEAR_ALL
    assert len(payload_for(many[:MAX_IDS_PER_PAYLOAD]).encode()) < 8000
    for payload in (CLEAR_ALL, "not-a-uuid"):
        cache = SessionStateCache(30)
        session_id = uuid.uuid4()
        cache.put(_state(session_id), read_at=cache.epoch)
        apply_payload(cache, payload)
        assert cache.get(session_id) is None


async def test_every_path_that_revokes_notifies_the_sessions_it_ended(postgres_url: str) -> None:
    """Logout, a device's revocation, logout-all, password change, deactivation and theft
    detection each announce exactly the sessions they ended on the channel replicas listen to."""
    heard: asyncio.Queue[set[str]] = asyncio.Queue()
    listener = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg", "postgresql"))
    await listener.add_listener(CHANNEL, lambda *args: heard.put_nowait(set(args[3].split(","))))

    async def announced() -> set[str]:
        return await asyncio.wait_for(heard.get(), 5)

    try:
        async for h in start_harness(make_settings(postgres_url, refresh_reuse_interval=0)):
            admin = bearer((await h.login(await h.create_user(role="admin")))["access_token"])
            email = await h.create_user()
            one, two, three = [await h.login(email) for _ in range(3)]
            ids = [t["session"]["id"] for t in (one, two, three)]

            await h.client.post("/auth/logout", headers=bearer(one["access_token"]))
            assert await announced() == {ids[0]}
            own = await h.client.delete(
                f"/auth/sessions/{ids[1]}", headers=bearer(three["access_token"])
            )
            assert own.status_code == 204, own.text
            assert await announced() == {ids[1]}
            await h.client.post("/auth/logout-all", headers=bearer(three["access_token"]))
            assert await announced() == {ids[2]}

            here, other = await h.login(email), await h.login(email)
            changed = await h.client.post(
                "/auth/password",
                json={"current_password": PASSWORD, "new_password": "another long password"},
                headers=bearer(here["access_token"]),
            )
            assert changed.status_code < 300, changed.text
            assert await announced() == {other["session"]["id"]}

            user_id = (await h.client.get("/auth/me", headers=bearer(here["access_token"]))).json()
            off = await h.client.post(f"/admin/users/{user_id['id']}/deactivate", headers=admin)
            assert off.status_code == 200, off.text
            assert await announced() == {here["session"]["id"]}

            stolen = await h.login(await h.create_user())
            assert (await h.refresh(stolen["refresh_token"])).status_code == 200
            h.clock.advance(1)  # past the reuse interval (0): a replay is theft
            replay = await h.refresh(stolen["refresh_token"])
            assert replay.json()["error"]["code"] == "refresh_token_reused"
            assert await announced() == {stolen["session"]["id"]}
            assert heard.empty()
    finally:
        await listener.close()
