"""Login and the password hash: what happens while a login is verifying a password."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.core.security import PasswordHasher
from app.core.settings import PasswordHashProfile
from app.sessions.models import RefreshToken, Session
from app.sessions.store import SessionStart
from app.users import repository as user_repo
from tests.conftest import PASSWORD, Harness, bearer, make_settings, start_harness


class GatedHasher(PasswordHasher):
    """Real verification, held at the gate until the test opens it: a hash that takes as long as
    the test needs, to line up a concurrent event deterministically."""

    def __init__(self) -> None:
        # The harness's costs (make_settings): it hashes as well as verifies for the app.
        super().__init__(profile=PasswordHashProfile.test)
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
def gated() -> GatedHasher:
    return GatedHasher()


@pytest.fixture
async def harness(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    """The usual harness; with the gated hasher when the test asks for `gated`."""
    passwords = request.getfixturevalue("gated") if "gated" in request.fixturenames else None
    async for h in start_harness(make_settings(database_url), passwords=passwords):
        yield h


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
    await harness.set_password(email, "the new password")
    gated.gate.set()
    response = await login
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_credentials"
    user_id = await _user_id(harness, email)
    assert await _login_rows(harness, user_id) == (0, ["login.failed"])  # no session started
    assert await _failure_reasons(harness, user_id) == ["password_changed_during_login"]
    await harness.login(email, "the new password")


async def test_deactivation_during_login_wins(harness: Harness, gated: GatedHasher) -> None:
    email = await harness.create_user()
    login = asyncio.create_task(
        harness.client.post("/auth/login", json={"email": email, "password": PASSWORD})
    )
    await gated.wait_entered(1)
    await harness.set_active(email, active=False)
    gated.gate.set()
    assert (await login).json()["error"]["code"] == "invalid_credentials"


async def test_lockout_during_login_wins(harness: Harness, gated: GatedHasher) -> None:
    email = await harness.create_user()
    login = asyncio.create_task(
        harness.client.post("/auth/login", json={"email": email, "password": PASSWORD})
    )
    await gated.wait_entered(1)
    user_id = await _user_id(harness, email)
    async with harness.ctx.engine.begin() as conn:  # a guesser's failures locked the account
        await user_repo.record_login_failure(
            conn, user_id, failed_logins=5, locked_until=harness.clock.now() + timedelta(hours=1)
        )
    gated.gate.set()
    assert (await login).json()["error"]["code"] == "invalid_credentials"
    assert await _login_rows(harness, user_id) == (0, ["login.failed"])
    assert await _failure_reasons(harness, user_id) == ["locked"]


async def test_login_writes_session_first_token_and_audit_row(harness: Harness) -> None:
    """What a login leaves in the database, the same whichever path wrote it (PostgreSQL's
    one-round-trip function or the statement-at-a-time path)."""
    email = await harness.create_user()
    user_id = await _user_id(harness, email)
    async with harness.ctx.engine.begin() as conn:  # earlier failures, not yet a lock
        await user_repo.record_login_failure(conn, user_id, failed_logins=2, locked_until=None)
    tokens = await harness.login(email, device_name="laptop")
    now = harness.clock.now()
    async with harness.ctx.engine.connect() as conn:
        session = (await conn.execute(select(Session).where(Session.user_id == user_id))).one()
        token = (await conn.execute(select(RefreshToken))).all()
        user = await user_repo.get_by_id(conn, user_id)
        audit = (await conn.execute(select(AuditEvent).where(AuditEvent.user_id == user_id))).one()
    assert str(session.id) == tokens["session"]["id"]
    assert (session.device_name, session.revoked_at) == ("laptop", None)
    assert session.ip is not None
    assert session.created_at == session.last_seen_at == now
    assert session.idle_expires_at == now + harness.ctx.policy.idle_timeout
    assert session.absolute_expires_at == now + harness.ctx.policy.absolute_lifetime
    mine = [t for t in token if t.session_id == session.id]
    assert [(t.generation, t.parent_id, t.used_at) for t in mine] == [(1, None, None)]
    assert mine[0].token_hash == harness.ctx.refresh_codec.hash(tokens["refresh_token"])
    assert user is not None
    assert (user.failed_logins, user.locked_until) == (0, None)
    assert (audit.event, audit.session_id, audit.details) == ("login.succeeded", session.id, {})
    assert (audit.ip, audit.created_at) == (session.ip, now)


async def _user_id(harness: Harness, email: str) -> uuid.UUID:
    async with harness.ctx.engine.connect() as conn:
        user = await user_repo.get_by_email(conn, email)
    assert user is not None
    return user.id


async def _login_rows(harness: Harness, user_id: uuid.UUID) -> tuple[int, list[str]]:
    """(sessions of the user, their audit events in order)."""
    async with harness.ctx.engine.connect() as conn:
        sessions = (await conn.execute(select(Session).where(Session.user_id == user_id))).all()
        events = await conn.execute(
            select(AuditEvent.event).where(AuditEvent.user_id == user_id).order_by(AuditEvent.id)
        )
        return len(sessions), list(events.scalars())


async def _failure_reasons(harness: Harness, user_id: uuid.UUID) -> list[str]:
    async with harness.ctx.engine.connect() as conn:
        rows = await conn.execute(
            select(AuditEvent.details)
            .where(AuditEvent.user_id == user_id, AuditEvent.event == "login.failed")
            .order_by(AuditEvent.id)
        )
        return [details["reason"] for details in rows.scalars()]


async def test_login_candidate_read_is_get_by_email(harness: Harness) -> None:
    """The store's login read (the driver-level read on PostgreSQL) returns what SQLAlchemy's
    would."""
    email = await harness.create_user()
    user_id = await _user_id(harness, email)
    locked_until = harness.clock.now() + timedelta(minutes=3)
    async with harness.ctx.engine.begin() as conn:
        await user_repo.record_login_failure(
            conn, user_id, failed_logins=7, locked_until=locked_until
        )
    candidate = await harness.ctx.store.find_login_candidate(email)
    async with harness.ctx.engine.connect() as conn:
        assert candidate == await user_repo.get_by_email(conn, email)
    assert candidate is not None
    assert type(candidate.id) is uuid.UUID
    assert candidate.locked_until == locked_until
    assert candidate.locked_until.utcoffset() == timedelta(0)
    assert await harness.ctx.store.find_login_candidate("nobody@example.com") is None


async def test_one_trip_start_only_for_accounts_that_looked_usable(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A locked or deactivated account takes the general path whether the password is right or
    wrong, so response time cannot tell a guesser that a guess during a lockout was right."""
    calls: list[uuid.UUID] = []
    real_start = harness.ctx.store.start

    async def counted(s: SessionStart) -> Any:
        calls.append(s.user_id)
        return await real_start(s)

    monkeypatch.setattr(harness.ctx.store, "start", counted)
    locked, inactive, usable = [await harness.create_user() for _ in range(3)]
    locked_id = await _user_id(harness, locked)
    async with harness.ctx.engine.begin() as conn:
        await user_repo.record_login_failure(
            conn,
            locked_id,
            failed_logins=5,
            locked_until=harness.clock.now() + timedelta(hours=1),
        )
    await harness.set_active(inactive, active=False)
    for email in (locked, inactive):
        response = await harness.client.post(
            "/auth/login", json={"email": email, "password": PASSWORD}
        )
        assert response.status_code == 401
    assert calls == []
    await harness.login(usable)
    assert calls == [await _user_id(harness, usable)]


async def test_password_change_racing_another_change_loses(
    harness: Harness, gated: GatedHasher
) -> None:
    """The current password is checked outside any transaction (a hash must not hold SQLite's
    write lock): a change that lands meanwhile wins, and the slower one is refused, not
    silently applied over it."""
    email = await harness.create_user()
    gated.gate.set()
    tokens = await harness.login(email)
    gated.gate.clear()
    change = asyncio.create_task(
        harness.client.post(
            "/auth/password",
            json={"current_password": PASSWORD, "new_password": "the user's new password"},
            headers=bearer(tokens["access_token"]),
        )
    )
    await gated.wait_entered(2)  # the login's check, then this change's
    await harness.set_password(email, "the operator's password")
    gated.gate.set()
    response = await change
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "invalid_current_password"
    await harness.login(email, "the operator's password")
    refused = await harness.client.post(
        "/auth/login", json={"email": email, "password": "the user's new password"}
    )
    assert refused.status_code == 401
