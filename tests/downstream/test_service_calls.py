"""Services calling services (issue 17, part 4), kit side, against a real auth service process:
ClientCredentialsAuth gets a client_credentials token from the issuer's token endpoint (found
by discovery), reuses it for every call, fetches one token for many concurrent calls, renews it
before expiry, retries once on a 401; a service built on the kit accepts the token on a route
that allows services (`Caller`) and refuses it where a user is needed (`Identity`), the notes
example included."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from authsvc_kit import ClientCredentialsAuth, Kit, Principal, TokenRequestFailed
from authsvc_kit.fastapi import Caller, Identity
from fastapi import FastAPI, HTTPException

from app.clients.service import ServiceClients
from app.core.clock import Clock
from app.core.db import committed_unit, create_engine
from tests.conftest import ISSUED_SECRETS
from tests.downstream.conftest import login, notes_service, service_config
from tests.support.servers import free_port, uvicorn_server

pytestmark = pytest.mark.slow
SERVICE_TTL = 5  # seconds: renewal comes 1 s (a fifth) before expiry


@pytest.fixture(scope="module")
def issuer_url(sqlite_url: str) -> Iterator[str]:
    """The real auth service naming itself its issuer, with short service tokens."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"JWT_ISSUER": base, "SERVICE_TOKEN_TTL": str(SERVICE_TTL)}
    with uvicorn_server(sqlite_url, env=env, port=port) as (url, _):
        yield url


async def register(database_url: str, client_id: str) -> str:
    engine = create_engine(database_url)
    try:
        async with committed_unit(engine) as uow:
            secret = await ServiceClients(engine).add(
                await uow.connection(), client_id, audiences=[], scopes=[], now=Clock().now()
            )
    finally:
        await engine.dispose()
    ISSUED_SECRETS.add(secret)
    return secret


class FakeMonotonic:
    """The auth's clock, moved by the test: renewal is tested without waiting for it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def resource_service(kit: Kit) -> tuple[FastAPI, dict[str, Any]]:
    """A tiny service on the kit: one route for services, one for users only. `refuse_next`
    makes it answer 401 to the next request (as a service would to a token it no longer takes)."""
    app = FastAPI()
    kit.install(app, backchannel_path=None)
    state: dict[str, Any] = {"refuse_next": False, "tokens": []}

    @app.get("/stats")
    async def stats(who: Caller) -> dict[str, Any]:
        if state["refuse_next"]:
            state["refuse_next"] = False
            raise HTTPException(401, "refused once")
        state["tokens"].append(who.jti)
        return {"service": who.is_service, "client_id": who.client_id, "sub": who.user_id}

    @app.get("/mine")
    async def mine(who: Identity) -> dict[str, Any]:
        return {"user": who.user_id}

    return app, state


@contextlib.asynccontextmanager
async def calling(
    issuer_url: str, client_id: str, secret: str, **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, ClientCredentialsAuth, dict[str, Any]]]:
    kit = Kit(service_config(issuer_url))
    app, state = resource_service(kit)
    auth = ClientCredentialsAuth(issuer_url, client_id, secret, **options)
    async with kit.lifespan(), auth:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://resource", auth=auth, timeout=5
        ) as client:
            yield client, auth, state


async def test_one_token_serves_many_calls_and_services_are_told_apart(
    issuer_url: str, sqlite_url: str
) -> None:
    secret = await register(sqlite_url, "billing")
    async with calling(issuer_url, "billing", secret) as (client, auth, state):
        answers = await asyncio.gather(*(client.get("/stats") for _ in range(20)))
        assert [a.status_code for a in answers] == [200] * 20
        assert auth.token_requests == 1  # single flight: twenty concurrent calls, one token
        assert answers[0].json() == {
            "service": True,
            "client_id": "billing",
            "sub": "client:billing",
        }
        for _ in range(5):
            assert (await client.get("/stats")).status_code == 200
        assert auth.token_requests == 1
        assert len(set(state["tokens"])) == 1

        refused = await client.get("/mine")  # a user-only route
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "user_token_required"
        assert auth.token_requests == 1  # a 403 is not a reason to fetch another token
        assert secret not in repr(auth)

        # A user's token still works on both routes, and is no service.
        user = await login(issuer_url, sqlite_url)
        headers = {"Authorization": f"Bearer {user['access_token']}"}
        plain = httpx.AsyncClient(transport=client._transport, base_url="http://resource")
        async with plain:
            mine = await plain.get("/mine", headers=headers)
            assert mine.status_code == 200
            as_user = await plain.get("/stats", headers=headers)
            assert as_user.json()["service"] is False


async def test_token_is_renewed_before_expiry_and_a_401_is_retried_once(
    issuer_url: str, sqlite_url: str
) -> None:
    secret = await register(sqlite_url, "reports")
    clock = FakeMonotonic()
    async with calling(issuer_url, "reports", secret, method="client_secret_post", clock=clock) as (
        client,
        auth,
        state,
    ):
        assert (await client.get("/stats")).status_code == 200
        first = await auth.token()
        clock.now += SERVICE_TTL - 1 - 0.1  # just before the renewal point (a fifth of 5 s)
        assert (await client.get("/stats")).status_code == 200
        assert auth.token_requests == 1
        clock.now += 0.2  # past it: still a second before the token expires
        assert (await client.get("/stats")).status_code == 200
        assert auth.token_requests == 2
        assert await auth.token() != first
        assert len(set(state["tokens"])) == 2

        state["refuse_next"] = True  # the resource refuses a token once: one retry, fresh token
        retried = await client.get("/stats")
        assert retried.status_code == 200
        assert auth.token_requests == 3


async def test_bad_credentials_raise_and_the_notes_example_refuses_service_tokens(
    issuer_url: str, sqlite_url: str
) -> None:
    secret = await register(sqlite_url, "auditor")
    async with calling(issuer_url, "auditor", secret + "x") as (client, auth, _):
        with pytest.raises(TokenRequestFailed) as refused:
            await client.get("/stats")
        assert refused.value.error == "invalid_client"
        assert refused.value.status == 401
        assert secret not in str(refused.value)
    down = ClientCredentialsAuth(
        "http://127.0.0.1:9", "auditor", secret, token_endpoint="http://127.0.0.1:9/t", timeout=1
    )
    async with down:
        with pytest.raises(TokenRequestFailed) as unreachable:
            await down.token()
    assert unreachable.value.error == "unavailable"

    # examples/notes: GET /notes acts for a user (Identity), so a service token gets 403.
    async with ClientCredentialsAuth(issuer_url, "auditor", secret) as auth:
        with notes_service(issuer_url, audience=service_config(issuer_url).audience) as notes:
            async with httpx.AsyncClient(base_url=notes, auth=auth, timeout=5) as client:
                answer = await client.get("/notes")
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "user_token_required"


def test_principal_without_sid_is_a_service() -> None:
    service = Principal("client:x", None, None, "x", 0, 1, "j", {})
    user = Principal("u", "s", "user", "authsvc", 0, 1, "j", {})
    assert service.is_service
    assert not user.is_service
