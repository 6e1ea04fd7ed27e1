"""Database outages against a private PostgreSQL cluster that each test starts and stops itself.

Never the machine's shared server: stopping that would break every other test running.
Every route that needs the database answers 503 `service_unavailable` with Retry-After within
a bounded time while it is down, never 500 and never a success that was not stored; when it is
back, the same app instance recovers by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import text

from app.core import migrate
from app.core.db import create_engine
from app.health import repository as health
from tests.conftest import (
    PASSWORD,
    Harness,
    bearer,
    make_settings,
    start_harness,
)
from tests.support.pgcluster import PgCluster

pytestmark = pytest.mark.slow

# Generous against a 1 s pool timeout, far below a hang (or the 30 s command timeout).
BOUND = 3.0


def harness_on(url: str, **overrides: Any) -> contextlib.AbstractAsyncContextManager[Harness]:
    return contextlib.asynccontextmanager(start_harness)(make_settings(url, **overrides))


Request = Callable[[], Awaitable[httpx.Response]]


async def timed(request: Request) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = await request()
    return response, time.monotonic() - started


def assert_unavailable(response: httpx.Response, elapsed: float, what: str) -> None:
    assert response.status_code == 503, f"{what}: {response.status_code} {response.text}"
    assert response.json()["error"]["code"] == "service_unavailable", what
    assert int(response.headers["retry-after"]) > 0, what
    # Answered inside the middleware stack, like any other error: request id echoed.
    assert "x-request-id" in response.headers, what
    assert elapsed < BOUND, f"{what} took {elapsed:.2f} s"


async def stored_rows(url: str) -> tuple[int, int]:
    """(sessions, refresh tokens) in the database: what was really stored."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            sessions = (await conn.execute(text("SELECT count(*) FROM sessions"))).scalar_one()
            tokens = (await conn.execute(text("SELECT count(*) FROM refresh_tokens"))).scalar_one()
            return int(sessions), int(tokens)
    finally:
        await engine.dispose()


async def outbox_and_users(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            jobs = (await conn.execute(text("SELECT count(*) FROM outbox_messages"))).scalar_one()
            users = (await conn.execute(text("SELECT count(*) FROM users"))).scalar_one()
            return int(jobs), int(users)
    finally:
        await engine.dispose()


async def every_route_unavailable(h: Harness, tokens: dict[str, Any], email: str) -> float:
    """Asserts every route that needs the database answers 503; returns the slowest time."""
    access = bearer(tokens["access_token"])
    client = h.client
    requests: dict[str, Request] = {
        "login": lambda: client.post("/auth/login", json={"email": email, "password": PASSWORD}),
        "refresh": lambda: h.refresh(tokens["refresh_token"]),
        "token (password grant)": lambda: client.post(
            "/auth/token", data={"grant_type": "password", "username": email, "password": PASSWORD}
        ),
        "me": lambda: client.get("/auth/me", headers=access),
        "session-status": lambda: client.get("/auth/session-status", headers=access),
        "verify": lambda: client.get("/auth/verify", headers=access),
        "logout": lambda: client.post("/auth/logout", headers=access),
        "readyz": lambda: client.get("/readyz"),
        "register": lambda: client.post(
            "/auth/register", json={"email": "during-outage@example.com", "password": PASSWORD}
        ),
        "password-reset request": lambda: client.post(
            "/auth/password-reset/request", json={"email": email}
        ),
        "password-reset confirm": lambda: client.post(
            "/auth/password-reset/confirm",
            json={"token": "a-token-nobody-was-sent", "new_password": "another passphrase 42"},
        ),
        "verify-email request": lambda: client.post("/auth/verify-email/request", headers=access),
        "verify-email confirm": lambda: client.post(
            "/auth/verify-email/confirm", json={"token": "a-token-nobody-was-sent"}
        ),
        # Second factors (docs/mfa.md): the second login step and the session's own routes.
        "login mfa step": lambda: client.post(
            "/auth/login/mfa", json={"challenge": "a-challenge-nobody-got", "code": "123456"}
        ),
        "mfa status": lambda: client.get("/auth/mfa", headers=access),
        "mfa enrol": lambda: client.post(
            "/auth/mfa/totp", json={"password": PASSWORD}, headers=access
        ),
        "step-up": lambda: client.post("/auth/step-up", json={"code": "123456"}, headers=access),
        "passkey login options": lambda: client.post("/auth/passkeys/login/options"),
        "passkeys": lambda: client.get("/auth/passkeys", headers=access),
    }
    slowest = 0.0
    for what, request in requests.items():
        response, elapsed = await timed(request)
        assert_unavailable(response, elapsed, what)
        slowest = max(slowest, elapsed)
    return slowest


async def test_outage_answers_503_fast_then_recovers_without_restart(
    pg_cluster: PgCluster,
) -> None:
    await asyncio.to_thread(migrate.upgrade, pg_cluster.url)
    # Registration open and answered through the outbox (REQUIRE_VERIFIED_EMAIL): its route
    # and the recovery routes meet the outage too.
    settings = {"allow_registration": True, "require_verified_email": True}
    async with harness_on(pg_cluster.url, db_pool_timeout=1, **settings) as h:
        email = await h.create_user()
        tokens = await h.login(email)
        assert (await h.client.get("/readyz")).status_code == 200

        await asyncio.to_thread(pg_cluster.stop)
        # Twice: first the pooled connections die under the requests (invalidated on first use),
        # then every new connection is refused.
        slowest = max(
            await every_route_unavailable(h, tokens, email),
            await every_route_unavailable(h, tokens, email),
        )
        health_check = await h.client.get("/healthz")
        assert health_check.status_code == 200  # the process itself is fine

        await asyncio.to_thread(pg_cluster.start)
        restarted = time.monotonic()
        ready = await h.client.get("/readyz")
        recovery = time.monotonic() - restarted
        # Shown by `pytest -rP tests/test_outage.py` (the closing note quotes it).
        print(f"outage: slowest 503 {slowest:.3f} s; recovery after restart {recovery:.3f} s")
        assert ready.status_code == 200, ready.text  # the very first request after the restart
        assert recovery < BOUND

        # Nothing attempted during the outage was stored: still one session and its first
        # refresh token, which now rotates once (a stored outage rotation would make this a
        # replay, answered from the stored successor without a new row).
        assert await stored_rows(pg_cluster.url) == (1, 1)
        assert await outbox_and_users(pg_cluster.url) == (0, 1)  # no job, no new account
        rotated = await h.refresh(tokens["refresh_token"])
        assert rotated.status_code == 200, rotated.text
        assert await stored_rows(pg_cluster.url) == (1, 2)
        again = await h.login(email)
        assert again["session"]["id"] != tokens["session"]["id"]
        me = await h.client.get("/auth/me", headers=bearer(rotated.json()["access_token"]))
        assert me.status_code == 200, me.text
        status = await h.client.get("/auth/session-status", headers=bearer(again["access_token"]))
        assert status.status_code == 200, status.text
        verify = await h.client.get("/auth/verify", headers=bearer(again["access_token"]))
        assert verify.status_code == 200, verify.text
        assert await stored_rows(pg_cluster.url) == (2, 3)


async def test_pool_exhaustion_answers_503_fast_and_leaks_nothing(pg_cluster: PgCluster) -> None:
    await asyncio.to_thread(migrate.upgrade, pg_cluster.url)
    async with harness_on(pg_cluster.url, db_pool_size=1, db_pool_timeout=0.5) as h:
        email = await h.create_user()
        tokens = await h.login(email)
        pool = h.ctx.engine.pool
        async with h.ctx.engine.connect() as held:  # the only connection, busy elsewhere
            await held.execute(text("SELECT 1"))
            access = bearer(tokens["access_token"])
            client = h.client
            requests: dict[str, Request] = {
                "me": lambda: client.get("/auth/me", headers=access),
                "verify": lambda: client.get("/auth/verify", headers=access),
                "login": lambda: client.post(
                    "/auth/login", json={"email": email, "password": PASSWORD}
                ),
                "refresh": lambda: h.refresh(tokens["refresh_token"]),
                "readyz": lambda: client.get("/readyz"),
            }
            for what, request in requests.items():
                response, elapsed = await timed(request)
                assert_unavailable(response, elapsed, what)
                assert elapsed < 1.5, f"{what}: {elapsed:.2f} s against a 0.5 s pool timeout"
            assert pool.checkedout() == 1  # type: ignore[attr-defined]
        assert pool.checkedout() == 0  # type: ignore[attr-defined]

        me = await h.client.get("/auth/me", headers=bearer(tokens["access_token"]))
        assert me.status_code == 200, me.text
        assert await stored_rows(pg_cluster.url) == (1, 1)  # the 503 refresh stored nothing
        rotated = await h.refresh(tokens["refresh_token"])
        assert rotated.status_code == 200, rotated.text
        assert (await h.client.get("/readyz")).status_code == 200
        assert pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_readyz_fails_while_migrations_are_pending(pg_cluster: PgCluster) -> None:
    # The app starts on a current schema (startup itself needs it); then the database is
    # taken back to revision 0001 underneath the running app, and upgraded again.
    await asyncio.to_thread(migrate.upgrade, pg_cluster.url)
    config = migrate.alembic_config(pg_cluster.url)
    async with harness_on(pg_cluster.url) as h:
        assert (await h.client.get("/readyz")).json()["migrations"] == "current"

        await asyncio.to_thread(command.downgrade, config, "0001")
        pending, elapsed = await timed(lambda: h.client.get("/readyz"))
        assert_unavailable(pending, elapsed, "readyz")
        assert "migrations are pending" in pending.json()["error"]["message"]
        assert (await h.client.get("/healthz")).status_code == 200

        await asyncio.to_thread(command.upgrade, config, "head")
        ready = await h.client.get("/readyz")
        assert ready.status_code == 200, ready.text


async def test_database_revisions_of_an_unmigrated_and_a_partly_migrated_database(
    pg_cluster: PgCluster,
) -> None:
    empty = create_engine(pg_cluster.url)
    try:
        async with empty.connect() as conn:
            assert await health.database_revisions(conn) == frozenset()  # no alembic_version
        await asyncio.to_thread(migrate.upgrade, pg_cluster.url, "0001")
        async with empty.connect() as conn:
            assert await health.database_revisions(conn) == {"0001"}
        await asyncio.to_thread(migrate.upgrade, pg_cluster.url)
        async with empty.connect() as conn:
            assert await health.database_revisions(conn) == health.expected_revisions()
    finally:
        await empty.dispose()
