"""Fixtures of the back-channel logout tests: a real receiver, and the service configured to
tell it (two clients: both at the receiver, at two paths) with short retry settings."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, cast

import jwt
import pytest
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.core.db import table_of
from app.core.settings import Settings
from app.outbox.models import OutboxMessage
from tests.conftest import Harness, make_settings, start_harness
from tests.support.receiver import Receiver

CLIENTS = ("notes", "billing")
ISSUER = "https://auth.test"
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
_outbox = table_of(OutboxMessage)
_audit = table_of(AuditEvent)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def backchannel_settings(database_url: str, receiver: Receiver, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "backchannel_logout_clients": json.dumps(
            [{"client_id": c, "uri": f"{receiver.url}/{c}"} for c in CLIENTS]
        ),
        "backchannel_logout_timeout": 2.0,
        "outbox_poll_interval": 0.2,
        "outbox_retry_base": 1.0,
        "outbox_retry_max": 2.0,
        **overrides,
    }
    return make_settings(database_url, **values)


HarnessFactory = Callable[..., Awaitable[Harness]]


class Services:
    """Starts and stops instances of the service (each its own engine and outbox worker),
    as a deployment restarts a replica."""

    def __init__(self, database_url: str, receiver: Receiver) -> None:
        self._database_url = database_url
        self._receiver = receiver
        self._running: dict[int, AsyncGenerator[Harness, None]] = {}

    async def start(self, **overrides: Any) -> Harness:
        settings = backchannel_settings(self._database_url, self._receiver, **overrides)
        runner = start_harness(settings)
        h = await runner.__anext__()
        self._running[id(h)] = cast(AsyncGenerator[Harness, None], runner)
        return h

    async def stop(self, h: Harness) -> None:
        await self._running.pop(id(h)).aclose()

    async def stop_all(self) -> None:
        for runner in reversed(list(self._running.values())):
            await runner.aclose()
        self._running.clear()


@pytest.fixture
async def services(database_url: str, receiver: Receiver) -> AsyncIterator[Services]:
    started = Services(database_url, receiver)
    yield started
    await started.stop_all()


async def outbox_rows(h: Harness, session_id: uuid.UUID | str | None = None) -> list[Any]:
    async with h.ctx.engine.connect() as conn:
        stmt = select(_outbox).order_by(_outbox.c.id)
        rows = list(await conn.execute(stmt))
    if session_id is None:
        return rows
    # Other kinds (email) have no sid: the run's database holds them too.
    return [row for row in rows if row.payload.get("sid") == str(session_id)]


async def audit_events(h: Harness, event: str, session_id: str) -> list[Any]:
    async with h.ctx.engine.connect() as conn:
        stmt = select(_audit).where(
            _audit.c.event == event, _audit.c.session_id == uuid.UUID(session_id)
        )
        return list(await conn.execute(stmt))


async def verified_claims(h: Harness, token: str, audience: str) -> dict[str, Any]:
    """The logout token checked as a receiver would: against the service's published JWKS,
    with PyJWT, pinning the algorithm, the type, the issuer and the audience."""
    jwks = (await h.client.get("/.well-known/jwks.json")).json()
    header = jwt.get_unverified_header(token)
    assert header["typ"] == "logout+jwt"
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=[header["alg"]],
        audience=audience,
        issuer=ISSUER,
        # The harness's clock is frozen at its start (a test may move it a few seconds on).
        leeway=60,
        options={"require": ["iss", "aud", "iat", "exp", "jti", "sub", "sid", "events"]},
    )
    assert header["alg"] == key.algorithm_name
    return claims
