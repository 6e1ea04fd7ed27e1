"""Rotation rules across real processes: two servers on one PostgreSQL, and a crash."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.core.db import create_engine, table_of
from app.sessions.models import RefreshToken
from tests.conftest import PASSWORD
from tests.support.servers import create_user_in, started_together, uvicorn_server

pytestmark = pytest.mark.slow


async def _create_user(database_url: str) -> str:
    return await create_user_in(database_url, prefix="proc")


async def _login(client: httpx.AsyncClient, base: str, email: str) -> dict[str, Any]:
    response = await client.post(f"{base}/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_two_servers_share_rotation_state(postgres_url: str) -> None:
    email = await _create_user(postgres_url)
    with started_together(uvicorn_server(postgres_url), uvicorn_server(postgres_url)) as [
        (a, _),
        (b, _),
    ]:
        async with httpx.AsyncClient(timeout=30) as client:
            tokens = await _login(client, a, email)
            token = tokens["refresh_token"]
            # Rule 3 across processes: 20 parallel refreshes split over both servers.
            responses = await asyncio.gather(
                *(
                    client.post(f"{(a, b)[i % 2]}/auth/refresh", json={"refresh_token": token})
                    for i in range(20)
                )
            )
            assert [r.status_code for r in responses] == [200] * 20
            successors = {r.json()["refresh_token"] for r in responses}
            assert len(successors) == 1
            successor = successors.pop()

            # Rule 2: a retry on the other server inside the interval gets the same successor.
            retry = await client.post(f"{b}/auth/refresh", json={"refresh_token": token})
            assert retry.json()["refresh_token"] == successor

            # Rule 4: an ancestor replay on one server revokes the session for both.
            newest = (
                await client.post(f"{a}/auth/refresh", json={"refresh_token": successor})
            ).json()
            theft = await client.post(f"{b}/auth/refresh", json={"refresh_token": token})
            assert theft.status_code == 401
            assert theft.json()["error"]["code"] == "refresh_token_reused"
            for server in (a, b):
                me = await client.get(
                    f"{server}/auth/me",
                    headers={"Authorization": f"Bearer {newest['access_token']}"},
                )
                assert me.json()["error"]["code"] == "session_revoked"


async def test_two_workers_answer_parallel_refreshes_identically(postgres_url: str) -> None:
    email = await _create_user(postgres_url)
    with uvicorn_server(postgres_url, workers=2) as (base, _):
        async with httpx.AsyncClient(timeout=30) as client:
            logins = [await _login(client, base, email) for _ in range(10)]
            for tokens in logins:
                responses = await asyncio.gather(
                    *(
                        client.post(
                            f"{base}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
                        )
                        for _ in range(20)
                    )
                )
                assert [r.status_code for r in responses] == [200] * 20
                assert len({r.json()["refresh_token"] for r in responses}) == 1


async def test_crash_after_commit_then_retry_succeeds(postgres_url: str) -> None:
    email = await _create_user(postgres_url)
    async with httpx.AsyncClient(timeout=30) as client:
        with uvicorn_server(postgres_url, factory="tests.support.crash_app:create_app") as (
            base,
            process,
        ):
            tokens = await _login(client, base, email)
            with pytest.raises(httpx.HTTPError):
                await client.post(
                    f"{base}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
                )
            assert await asyncio.to_thread(process.wait, 10) == 70  # it really died
        # The rotation was committed before the process died: R1 used, one successor stored.
        rows = await _chain(postgres_url, tokens["session"]["id"])
        assert len(rows) == 2
        assert rows[0].used_at is not None
        assert rows[1].used_at is None
        with uvicorn_server(postgres_url) as (base, _):
            retry = await client.post(
                f"{base}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
            )
            assert retry.status_code == 200, retry.text
            successor = retry.json()["refresh_token"]
            # The committed successor is the one the retry returned: it rotates normally.
            again = await client.post(f"{base}/auth/refresh", json={"refresh_token": successor})
            assert again.status_code == 200
        assert len(await _chain(postgres_url, tokens["session"]["id"])) == 3


async def _chain(database_url: str, session_id: str) -> list[Any]:
    tokens = table_of(RefreshToken)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(tokens)
                .where(tokens.c.session_id == uuid.UUID(session_id))
                .order_by(tokens.c.generation)
            )
            return list(rows)
    finally:
        await engine.dispose()
