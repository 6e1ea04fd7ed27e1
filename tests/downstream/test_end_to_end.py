"""End to end, no stand-in: the real auth service sends back-channel logouts (its outbox) to
the notes service, which never calls it per request. Runs once the sender (issue 17, part 1,
app/backchannel) is in the tree."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from tests.downstream.conftest import login, notes_service
from tests.downstream.issuer import CLIENT_ID
from tests.downstream.wsclient import next_message, open_socket, until_closed
from tests.support.servers import AUDIENCE, free_port, uvicorn_server

pytest.importorskip("app.backchannel.service", reason="the back-channel sender is not here yet")
pytestmark = pytest.mark.slow


async def _status(notes: str, token: str) -> int:
    async with httpx.AsyncClient(base_url=notes, timeout=5) as client:
        response = await client.get("/notes", headers={"Authorization": f"Bearer {token}"})
    return response.status_code


async def test_a_real_logout_reaches_notes_and_closes_its_socket(sqlite_url: str) -> None:
    auth_port, notes_port = free_port(), free_port()
    auth = f"http://127.0.0.1:{auth_port}"
    receiver = f"http://127.0.0.1:{notes_port}/backchannel-logout"
    env = {
        "JWT_ISSUER": auth,
        "BACKCHANNEL_LOGOUT_CLIENTS": json.dumps([{"client_id": CLIENT_ID, "uri": receiver}]),
        "OUTBOX_RETRY_BASE": "0.2",
        "OUTBOX_RETRY_MAX": "0.5",
    }
    with uvicorn_server(sqlite_url, env=env, port=auth_port):
        tokens = await login(auth, sqlite_url)
        bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
        with notes_service(auth, audience=AUDIENCE, port=notes_port) as notes:
            assert await _status(notes, tokens["access_token"]) == 200
            socket = await open_socket(notes, tokens["access_token"])
            assert (await next_message(socket))["type"] == "hello"
            async with httpx.AsyncClient(base_url=auth, timeout=5) as client:
                started = time.monotonic()
                assert (await client.post("/auth/logout", headers=bearer)).status_code == 204
            closed = await until_closed(socket, within=5)
            assert (closed.code, closed.reason) == (4403, "session_revoked")
            assert closed.at - started < 1.0, closed.at - started
            assert await _status(notes, tokens["access_token"]) == 401

        # The notes service down during a logout: the outbox retries until it is back.
        second = await login(auth, sqlite_url)
        async with httpx.AsyncClient(base_url=auth, timeout=5) as client:
            logout = await client.post(
                "/auth/logout", headers={"Authorization": f"Bearer {second['access_token']}"}
            )
            assert logout.status_code == 204
        await asyncio.sleep(0.5)  # a few failed attempts
        with notes_service(auth, audience=AUDIENCE, port=notes_port) as notes:
            deadline = time.monotonic() + 5
            while await _status(notes, second["access_token"]) != 401:
                assert time.monotonic() < deadline, "the retried logout never arrived"
                await asyncio.sleep(0.05)
