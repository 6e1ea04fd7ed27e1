"""Issue 15 item 1: POST /auth/password is no password oracle. Its failures count toward the
account's lockout, are audited, are rate limited per session, and end the session after
PASSWORD_CHANGE_MAX_FAILURES."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import jwt
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.core.db import table_of
from tests.conftest import PASSWORD, Harness, bearer, error_code, make_settings, start_harness

WRONG = {"current_password": "not the password", "new_password": "a brand new password"}


async def _change(h: Harness, token: str, body: dict[str, str]) -> httpx.Response:
    return await h.client.post("/auth/password", json=body, headers=bearer(token))


async def _session_events(h: Harness, tokens: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    session_id = claims["sid"]
    t = table_of(AuditEvent)
    async with h.ctx.engine.connect() as conn:
        rows = await conn.execute(
            select(t.c.event, t.c.details)
            .where(t.c.session_id == uuid.UUID(session_id))
            .order_by(t.c.id)
        )
        return [(event, details) for event, details in rows]


async def test_wrong_current_passwords_count_toward_the_lockout(database_url: str) -> None:
    settings = make_settings(database_url, lockout_threshold=3, password_change_max_failures=10)
    async for h in start_harness(settings):
        email = await h.create_user()
        session = await h.login(email)
        for _ in range(3):
            wrong = await _change(h, session["access_token"], WRONG)
            assert wrong.status_code == 403
            assert error_code(wrong) == "invalid_current_password"
        # Three failures at /auth/password lock the account for a new client, as three
        # failed logins would.
        locked = await h.client.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert locked.status_code == 401
        assert error_code(locked) == "invalid_credentials"
        h.clock.advance(settings.lockout_base_seconds + 1)
        assert (
            await h.client.post("/auth/login", json={"email": email, "password": PASSWORD})
        ).status_code == 200


async def test_each_failure_is_audited_with_its_session(harness: Harness) -> None:
    email = await harness.create_user()
    session = await harness.login(email)
    await _change(harness, session["access_token"], WRONG)
    await _change(harness, session["access_token"], WRONG)
    events = await _session_events(harness, session)
    assert [e for e, _ in events].count("password.change_failed") == 2


async def test_the_session_ends_after_max_failures(database_url: str) -> None:
    settings = make_settings(database_url, lockout_threshold=50, password_change_max_failures=3)
    async for h in start_harness(settings):
        email = await h.create_user()
        guesser = await h.login(email)
        bystander = await h.login(email)
        answers = [await _change(h, guesser["access_token"], WRONG) for _ in range(3)]
        assert [a.status_code for a in answers] == [403, 403, 401]
        assert error_code(answers[-1]) == "session_revoked"
        assert answers[-1].headers["WWW-Authenticate"].startswith("Bearer")
        # The guessing session is over: its access and refresh tokens are refused...
        me = await h.client.get("/auth/me", headers=bearer(guesser["access_token"]))
        assert error_code(me) == "session_revoked"
        assert (await h.refresh(guesser["refresh_token"])).status_code == 401
        # ...even with the right password now, and nothing changed.
        late = await _change(h, guesser["access_token"], {**WRONG, "current_password": PASSWORD})
        assert late.status_code == 401
        # The owner's other session and password are untouched.
        assert (
            await h.client.get("/auth/me", headers=bearer(bystander["access_token"]))
        ).status_code == 200
        await h.login(email)
        events = [e for e, _ in await _session_events(h, guesser)]
        assert events.count("password.change_failed") == 3
        assert "session.revoked" in events


async def test_failures_below_the_limit_do_not_block_the_owner(harness: Harness) -> None:
    email = await harness.create_user()
    session = await harness.login(email)
    await _change(harness, session["access_token"], WRONG)
    changed = await _change(
        harness, session["access_token"], {**WRONG, "current_password": PASSWORD}
    )
    assert changed.status_code == 204
    await harness.login(email, WRONG["new_password"])


async def test_attempts_are_rate_limited_per_session_before_hashing(database_url: str) -> None:
    settings = make_settings(
        database_url,
        rate_limits_enabled=True,
        rate_limit_password_change="2/minute",
        rate_limit_login_ip="100/minute",
        rate_limit_login_account="100/minute",
        password_change_max_failures=10,
    )
    async for h in start_harness(settings):
        email = await h.create_user()
        first = await h.login(email)
        second = await h.login(email)
        statuses = [(await _change(h, first["access_token"], WRONG)).status_code for _ in range(3)]
        assert statuses == [403, 403, 429]
        limited = await _change(h, first["access_token"], WRONG)
        assert error_code(limited) == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
        # A refused attempt was never checked: only two failures are on record.
        events = [e for e, _ in await _session_events(h, first)]
        assert events.count("password.change_failed") == 2
        # The limit is the session's own: another session of the owner is not slowed.
        assert (await _change(h, second["access_token"], WRONG)).status_code == 403


async def test_a_lock_from_failed_logins_does_not_block_a_live_sessions_change(
    database_url: str,
) -> None:
    settings = make_settings(database_url, lockout_threshold=2)
    async for h in start_harness(settings):
        email = await h.create_user()
        session = await h.login(email)
        for _ in range(2):
            await h.client.post("/auth/login", json={"email": email, "password": "a wrong guess"})
        locked = await h.client.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert error_code(locked) == "invalid_credentials"
        changed = await _change(h, session["access_token"], {**WRONG, "current_password": PASSWORD})
        assert changed.status_code == 204


async def test_concurrent_guesses_never_exceed_the_sessions_budget(database_url: str) -> None:
    """Failures are recorded after a hash; each check claims its slot before it (issue 15
    review M1: a burst of guesses used to be checked all at once, and a right one among them
    changed the password after the session had been ended)."""
    settings = make_settings(
        database_url,
        password_hash_profile="owasp",  # real hashing time, so that the guesses overlap
        password_change_max_failures=3,
        lockout_threshold=50,
    )
    async for h in start_harness(settings):
        email = await h.create_user()
        session = await h.login(email)
        right = {**WRONG, "current_password": PASSWORD}
        bodies = [WRONG] * 6 + [right] + [WRONG] * 3
        answers = await asyncio.gather(
            *(_change(h, session["access_token"], body) for body in bodies)
        )
        assert {a.status_code for a in answers} <= {204, 401, 403, 429}
        events = [e for e, _ in await _session_events(h, session)]
        assert events.count("password.change_failed") <= 3
        assert events.count("session.revoked") <= 1
        if "password.changed" in events and "session.revoked" in events:
            assert events.index("password.changed") < events.index("session.revoked")
        checked = events.count("password.change_failed") + events.count("password.changed")
        assert checked <= 3
