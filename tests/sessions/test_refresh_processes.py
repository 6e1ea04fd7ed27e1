"""Rotation rules across real processes: two servers on one PostgreSQL, a crash, and a server
that stalls (a paused process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

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
    env = {"REFRESH_REUSE_INTERVAL": "3"}  # short, so that the test can wait it out
    with started_together(
        uvicorn_server(postgres_url, env=env), uvicorn_server(postgres_url, env=env)
    ) as [(a, _), (b, _)]:
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

            # Rule 4: an ancestor replay (past the reuse interval of its first use, so no
            # delayed duplicate) on one server revokes the session for both.
            newest = (
                await client.post(f"{a}/auth/refresh", json={"refresh_token": successor})
            ).json()
            await asyncio.sleep(3.5)
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


@contextlib.contextmanager
def _paused(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """The server process stopped (SIGSTOP), as a replica stalls in a long GC pause or starved
    of CPU: the kernel still accepts connections and buffers what they send."""
    process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        process.send_signal(signal.SIGCONT)


async def test_delayed_duplicate_from_a_stalled_server_is_superseded_not_theft(
    postgres_url: str,
) -> None:
    """Replica A stalls holding a refresh of R1; the client retries R1 on B and moves on to
    R3; then A wakes and handles R1: an ancestor, inside the reuse interval of its first use.
    A refuses it as superseded and the session lives on."""
    email = await _create_user(postgres_url)
    env = {"REFRESH_REUSE_INTERVAL": "120"}  # far longer than the stall
    with started_together(
        uvicorn_server(postgres_url, env=env), uvicorn_server(postgres_url, env=env)
    ) as [(a, process_a), (b, _)]:
        async with httpx.AsyncClient(timeout=60) as client:
            tokens = await _login(client, b, email)
            r1 = tokens["refresh_token"]
            with _paused(process_a):
                delayed = asyncio.create_task(
                    client.post(f"{a}/auth/refresh", json={"refresh_token": r1})
                )
                await asyncio.sleep(0.5)  # sent: it waits in A's listen backlog
                r2 = await client.post(f"{b}/auth/refresh", json={"refresh_token": r1})
                assert r2.status_code == 200, r2.text
                r3 = await client.post(
                    f"{b}/auth/refresh", json={"refresh_token": r2.json()["refresh_token"]}
                )
                assert r3.status_code == 200, r3.text
                assert not delayed.done()
            answer = await delayed
            assert answer.status_code == 401, answer.text
            assert answer.json()["error"]["code"] == "refresh_token_superseded"
            # Nothing was revoked: R3's access token works and R3 refreshes, on either server.
            for server in (a, b):
                me = await client.get(
                    f"{server}/auth/me",
                    headers={"Authorization": f"Bearer {r3.json()['access_token']}"},
                )
                assert me.status_code == 200, me.text
            r4 = await client.post(
                f"{a}/auth/refresh", json={"refresh_token": r3.json()["refresh_token"]}
            )
            assert r4.status_code == 200, r4.text


async def test_refresh_stalled_after_arrival_is_measured_from_arrival(postgres_url: str) -> None:
    """A refresh of R1 reaches replica A, which stalls before handling it; the same R1 is
    rotated on B meanwhile; A wakes after more than the reuse interval. Measured from arrival
    it is the retry it is (200, the same successor), not a stale replay that revokes the
    session."""
    email = await _create_user(postgres_url)
    env = {"REFRESH_REUSE_INTERVAL": "2"}
    with started_together(
        uvicorn_server(postgres_url, env=env), uvicorn_server(postgres_url, env=env)
    ) as [(a, process_a), (b, _)]:
        async with httpx.AsyncClient(timeout=60) as client:
            r1 = (await _login(client, b, email))["refresh_token"]
            body = json.dumps({"refresh_token": r1}).encode()
            where = urlsplit(a)
            reader, writer = await asyncio.open_connection(where.hostname, where.port)
            writer.write(
                b"POST /auth/refresh HTTP/1.1\r\nHost: auth.test\r\n"
                b"Content-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            await writer.drain()
            await asyncio.sleep(0.5)  # A has the request's head: it has arrived
            with _paused(process_a):
                writer.write(body)
                await writer.drain()
                rotated = await client.post(f"{b}/auth/refresh", json={"refresh_token": r1})
                assert rotated.status_code == 200, rotated.text
                await asyncio.sleep(3)  # A handles R1 3 s after its first use on B
            answer = await asyncio.wait_for(reader.read(), timeout=30)
            writer.close()
            head, _, content = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), answer[:300]
            assert json.loads(content)["refresh_token"] == rotated.json()["refresh_token"]


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
