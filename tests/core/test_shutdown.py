"""Graceful shutdown: in-flight requests finish, and their session slides reach the database."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import httpx
import pytest
from sqlalchemy import select

from app.core.db import create_engine, table_of
from app.sessions.models import Session
from tests.conftest import PASSWORD
from tests.support.servers import create_user_in, uvicorn_server

pytestmark = pytest.mark.slow


async def _idle_deadline(database_url: str, session_id: str) -> object:
    sessions = table_of(Session)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            stmt = select(sessions.c.idle_expires_at).where(sessions.c.id == uuid.UUID(session_id))
            return (await conn.execute(stmt)).scalar_one()
    finally:
        await engine.dispose()


async def test_sigterm_lets_in_flight_requests_finish(postgres_url: str) -> None:
    email = await create_user_in(postgres_url, prefix="shutdown")
    env = {
        "SESSION_TOUCH_INTERVAL": "0",  # every request slides: the slide is the last step
        # Real argon2 costs (the first login upgrades the test-profile hash): the logins must
        # still be hashing when the signal comes, as production's would be.
        "PASSWORD_HASH_PROFILE": "owasp",
    }
    with uvicorn_server(postgres_url, env=env) as (base, process):
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            login = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
            tokens = login.json()
            before = await _idle_deadline(postgres_url, tokens["session"]["id"])
            await asyncio.sleep(1.1)  # so a slide moves the deadline by a visible amount
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            outcomes: list[tuple[str, float]] = []
            first_activity_answered = asyncio.Event()

            async def call(method: str, url: str, **kw: object) -> None:
                try:
                    response = await client.request(method, url, **kw)  # type: ignore[arg-type]
                    outcomes.append((str(response.status_code), time.monotonic()))
                    if url == "/auth/me" and response.status_code == 200:
                        first_activity_answered.set()
                except httpx.HTTPError as exc:  # not yet read by the server when it stopped
                    outcomes.append((type(exc).__name__, time.monotonic()))

            body = {"email": email, "password": PASSWORD}
            tasks = [asyncio.create_task(call("POST", "/auth/login", json=body)) for _ in range(6)]
            tasks += [
                asyncio.create_task(call("GET", "/auth/me", headers=headers)) for _ in range(6)
            ]
            # The signal comes once the server is serving the batch: a /me has its answer (its
            # slide, the step after the answer, is in flight) and the logins are hashing. A
            # fixed wait raced the client's own connection set-up on a busy machine.
            await asyncio.wait_for(first_activity_answered.wait(), timeout=10)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            await asyncio.gather(*tasks)
            # uvicorn shuts down gracefully, then re-raises the signal so the exit status says so
            assert await asyncio.to_thread(process.wait, 20) in {0, -signal.SIGTERM}
    # Requests the server was serving when the signal came finish with their answer; a request
    # whose bytes it had not read yet may be refused or reset (the client retries it).
    answered = [kind for kind, _ in outcomes if kind.isdigit()]
    assert set(answered) == {"200"}, outcomes
    assert any(kind == "200" and at > signalled for kind, at in outcomes), outcomes
    after = await _idle_deadline(postgres_url, tokens["session"]["id"])
    assert after > before  # type: ignore[operator]
