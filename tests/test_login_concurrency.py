"""Login and the password hash: what happens while a login is verifying a password."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.core.security import PasswordHasher
from app.users import service as users
from tests.conftest import PASSWORD, Harness, bearer


class GatedHasher(PasswordHasher):
    """Real verification, held at the gate until the test opens it: a hash that takes as long as
    the test needs, to line up a concurrent event deterministically."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.entered = 0
        self._arrivals = asyncio.Condition()

    async def verify_and_update(self, password: str, stored: str | None) -> tuple[bool, str | None]:
        async with self._arrivals:
            self.entered += 1
            self._arrivals.notify_all()
        result = await super().verify_and_update(password, stored)
        await self.gate.wait()
        return result

    async def wait_entered(self, n: int) -> None:
        async with self._arrivals:
            await self._arrivals.wait_for(lambda: self.entered >= n)


@pytest.fixture
def gated(harness: Harness) -> GatedHasher:
    hasher = GatedHasher()
    harness.ctx.passwords = hasher
    return hasher


async def test_no_connection_is_held_while_hashing(harness: Harness, gated: GatedHasher) -> None:
    email = await harness.create_user()
    gated.gate.set()
    tokens = await harness.login(email)
    gated.gate.clear()
    logins: list[asyncio.Task[Any]] = [
        asyncio.create_task(
            harness.client.post("/auth/login", json={"email": email, "password": "wrong-pass"})
        )
        for _ in range(12)  # more than the pool has connections
    ]
    await gated.wait_entered(13)
    # With every login parked inside the hash, the database is still free for others.
    me = await asyncio.wait_for(
        harness.client.get("/auth/me", headers=bearer(tokens["access_token"])), timeout=3
    )
    assert me.status_code == 200
    gated.gate.set()
    assert {(await t).status_code for t in logins} == {401}


async def test_password_change_during_login_wins(harness: Harness, gated: GatedHasher) -> None:
    email = await harness.create_user()
    login = asyncio.create_task(
        harness.client.post("/auth/login", json={"email": email, "password": PASSWORD})
    )
    await gated.wait_entered(1)
    async with harness.ctx.engine.begin() as conn:
        await users.set_password(
            conn, PasswordHasher(), email, "the new password", now=harness.clock.now()
        )
    gated.gate.set()
    response = await login
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_credentials"
    await harness.login(email, "the new password")


async def test_deactivation_during_login_wins(harness: Harness, gated: GatedHasher) -> None:
    email = await harness.create_user()
    login = asyncio.create_task(
        harness.client.post("/auth/login", json={"email": email, "password": PASSWORD})
    )
    await gated.wait_entered(1)
    async with harness.ctx.engine.begin() as conn:
        await users.set_active(conn, email, active=False, now=harness.clock.now())
    gated.gate.set()
    assert (await login).json()["error"]["code"] == "invalid_credentials"
