"""Fixtures for the downstream kit: a real auth service naming itself its issuer, the stand-in
issuer, and the notes service (examples/notes) as a real uvicorn process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from authsvc_kit import Kit, KitConfig

from tests.conftest import PASSWORD
from tests.downstream.issuer import AUDIENCE, CLIENT_ID, FakeIssuer, fake_issuer
from tests.support.servers import AUDIENCE as SERVICE_AUDIENCE
from tests.support.servers import create_user_in, free_port, uvicorn_server

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def notes_service(
    issuer: str,
    audience: str = AUDIENCE,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[str]:
    """examples/notes as `uvicorn examples.notes.app:app`, configured by environment only."""
    with uvicorn_server(
        "sqlite+aiosqlite:///:memory:",  # unused: the notes service has no database
        factory="examples.notes.app:app",
        is_factory=False,
        env={
            "AUTHSVC_ISSUER": issuer,
            "AUTHSVC_AUDIENCE": audience,
            "NOTES_CLIENT_ID": CLIENT_ID,
            **(env or {}),
        },
        port=port,
    ) as (url, _):
        yield url


# One stand-in issuer and one notes process per module: each test uses its own users and
# sessions; tests that break the issuer start their own.
@pytest.fixture(scope="module")
def issuer() -> Iterator[FakeIssuer]:
    with fake_issuer() as running:
        yield running


@pytest.fixture(scope="module")
def notes(issuer: FakeIssuer) -> Iterator[str]:
    # A browser's first message is awaited 1 s here (5 s by default), to keep the tests short.
    with notes_service(issuer.url, env={"AUTHSVC_WS_AUTH_TIMEOUT": "1"}) as url:
        yield url


@pytest.fixture(scope="module")
def auth_service(sqlite_url: str) -> Iterator[str]:
    """The real auth service on SQLite, its issuer its own address (so discovery's jwks_uri
    is reachable), keys reloaded every second (rotation tests)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"JWT_ISSUER": base, "KEY_RELOAD_INTERVAL": "1"}
    with uvicorn_server(sqlite_url, env=env, port=port) as (url, _):
        yield url


@pytest.fixture
async def service_kit(auth_service: str) -> AsyncIterator[Kit]:
    kit = Kit(service_config(auth_service))
    async with kit.lifespan():
        yield kit


def service_config(auth_service: str, **changes: Any) -> KitConfig:
    return KitConfig(issuer=auth_service, audience=SERVICE_AUDIENCE, client_id=CLIENT_ID, **changes)


async def login(auth_service: str, database_url: str) -> dict[str, Any]:
    """A real login of a fresh user: the token pair as the service hands it out."""
    email = await create_user_in(database_url, prefix="kit")
    async with httpx.AsyncClient(base_url=auth_service, timeout=10) as client:
        response = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
