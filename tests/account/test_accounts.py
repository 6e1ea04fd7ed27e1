"""Issue 6: rate limits, lockout, device sessions, password lifecycle, admin, registration."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from pwdlib.hashers.bcrypt import BcryptHasher
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.core.db import table_of
from app.core.security import PasswordHasher
from app.core.settings import PasswordHashProfile
from app.users import repository as user_repo
from app.users.models import User
from tests.conftest import (
    PASSWORD,
    TEST_REDIS_URL,
    Harness,
    bearer,
    error_code,
    make_settings,
    start_harness,
)
from tests.support.servers import started_together, uvicorn_server

PROXY = "203.0.113.7"  # the test transport's peer address, trusted as a proxy below


def from_ip(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


async def _stored_hash(h: Harness, email: str) -> str:
    async with h.ctx.engine.connect() as conn:
        user = await user_repo.get_by_email(conn, email)
    assert user is not None
    return user.password_hash


async def _events(h: Harness, user_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
    t = table_of(AuditEvent)
    async with h.ctx.engine.connect() as conn:
        rows = await conn.execute(
            select(t.c.event, t.c.details, t.c.ip).where(t.c.user_id == user_id).order_by(t.c.id)
        )
        return [(event, {**details, "ip": ip}) for event, details, ip in rows]


async def _user_id(h: Harness, email: str) -> uuid.UUID:
    t = table_of(User)
    async with h.ctx.engine.connect() as conn:
        value = (await conn.execute(select(t.c.id).where(t.c.email == email))).scalar_one()
    assert isinstance(value, uuid.UUID)
    return value


async def test_lockout_survives_ip_rotation_and_expires(database_url: str) -> None:
    settings = make_settings(
        database_url,
        rate_limits_enabled=True,
        rate_limit_login_account="100/minute",
        trusted_proxies=[PROXY],
    )
    async for h in start_harness(settings):
        email = await h.create_user()
        wrong = {"email": email, "password": "not the password"}
        answers = [
            await h.client.post("/auth/login", json=wrong, headers=from_ip(f"198.51.100.{i}"))
            for i in range(20)
        ]
        assert {r.status_code for r in answers} == {401}
        # The right password during the lock gets exactly the wrong password's answer.
        during = await h.client.post(
            "/auth/login", json={"email": email, "password": PASSWORD}, headers=from_ip("192.0.2.1")
        )
        assert during.status_code == 401
        assert during.text == answers[0].text
        assert error_code(during) == "invalid_credentials"
        events = await _events(h, await _user_id(h, email))
        assert [e for e, _ in events].count("account.locked") >= 1
        assert {d["ip"] for e, d in events if e == "login.failed"} >= {"198.51.100.0", "192.0.2.1"}
        assert any(d.get("reason") == "locked" for e, d in events if e == "login.failed")
        # The lock is temporary: after the cap it opens, and a success resets the counter.
        h.clock.advance(settings.lockout_max_seconds + 1)
        ok = await h.client.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert ok.status_code == 200, ok.text
        async with h.ctx.engine.connect() as conn:
            user = await user_repo.get_by_email(conn, email)
        assert user is not None
        assert user.failed_logins == 0
        assert user.locked_until is None


async def test_lock_durations_double_and_cap(database_url: str) -> None:
    settings = make_settings(database_url, lockout_threshold=3, lockout_base_seconds=10)
    async for h in start_harness(settings):
        email = await h.create_user()
        wrong = {"email": email, "password": "not the password"}
        for _ in range(3):
            await h.client.post("/auth/login", json=wrong)
        h.clock.advance(9)  # still locked after 9 s
        assert (
            await h.client.post("/auth/login", json={"email": email, "password": PASSWORD})
        ).status_code == 401
        h.clock.advance(2)  # open after 10 s; one more failure locks for 20 s
        await h.client.post("/auth/login", json=wrong)
        h.clock.advance(19)
        assert (
            await h.client.post("/auth/login", json={"email": email, "password": PASSWORD})
        ).status_code == 401
        h.clock.advance(2)
        assert (
            await h.client.post("/auth/login", json={"email": email, "password": PASSWORD})
        ).status_code == 200


async def test_login_rate_limit_per_ip_and_per_account(database_url: str) -> None:
    # Hour windows in every test that counts exactly: the sliding-window counter (the limits
    # library) floors the previous window's weighted count, so just after a window boundary it
    # lets one more request through. With minute windows these tests failed at :00.
    settings = make_settings(
        database_url,
        rate_limits_enabled=True,
        rate_limit_login_ip="3/hour",
        rate_limit_login_account="5/hour",
        trusted_proxies=[PROXY],
    )
    async for h in start_harness(settings):
        email = await h.create_user()
        body = {"email": email, "password": PASSWORD}
        for _ in range(3):
            assert (
                await h.client.post("/auth/login", json=body, headers=from_ip("198.51.100.9"))
            ).status_code == 200
        limited = await h.client.post("/auth/login", json=body, headers=from_ip("198.51.100.9"))
        assert limited.status_code == 429
        assert error_code(limited) == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 3600
        # Another IP may still log in, until the account's own limit is reached.
        assert (
            await h.client.post("/auth/login", json=body, headers=from_ip("198.51.100.10"))
        ).status_code == 200
        assert (
            await h.client.post("/auth/login", json=body, headers=from_ip("198.51.100.11"))
        ).status_code == 200
        per_account = await h.client.post(
            "/auth/login", json=body, headers=from_ip("198.51.100.12")
        )
        assert error_code(per_account) == "rate_limited"


async def test_refresh_rate_limit_per_session(database_url: str) -> None:
    settings = make_settings(
        database_url, rate_limits_enabled=True, rate_limit_refresh_session="3/hour"
    )
    async for h in start_harness(settings):
        tokens = await h.login(await h.create_user())
        token = tokens["refresh_token"]
        for _ in range(3):
            response = await h.refresh(token)
            assert response.status_code == 200
            token = response.json()["refresh_token"]
        limited = await h.refresh(token)
        assert limited.status_code == 429
        assert error_code(limited) == "rate_limited"
        # Refused, not consumed: the token is still the session's newest and still works later.
        assert (
            await h.client.get("/auth/me", headers=bearer(tokens["access_token"]))
        ).status_code == 200


async def test_forwarded_for_is_ignored_from_untrusted_peers(harness: Harness) -> None:
    email = await harness.create_user()
    await harness.client.post(
        "/auth/login",
        json={"email": email, "password": "not the password"},
        headers=from_ip("10.9.9.9"),
    )
    events = await _events(harness, await _user_id(harness, email))
    assert {d["ip"] for _, d in events} == {"203.0.113.7"}


async def test_rate_limits_are_shared_through_redis(postgres_url: str) -> None:
    async for h in start_harness(make_settings(postgres_url)):
        email = await h.create_user()
    env = {
        "RATE_LIMITS_ENABLED": "true",
        "REDIS_URL": TEST_REDIS_URL,
        "RATE_LIMIT_NAMESPACE": f"test-{uuid.uuid4().hex}",
        "RATE_LIMIT_LOGIN_IP": "4/hour",
    }
    with started_together(
        uvicorn_server(postgres_url, env=env), uvicorn_server(postgres_url, env=env)
    ) as [(a, _), (b, _)]:
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"email": email, "password": PASSWORD}
            statuses = [
                (await client.post(f"{server}/auth/login", json=body)).status_code
                for server in (a, b, a, b, a, b)
            ]
    assert statuses == [200, 200, 200, 200, 429, 429]


async def test_rehash_upgrades_legacy_and_weak_hashes(database_url: str) -> None:
    """Upgrades to the production (OWASP) costs, so this app runs with them, not the test
    profile's: a bcrypt hash and a weak argon2id hash are both replaced at the next login."""
    weak_hasher = PasswordHasher(threads=1, profile=PasswordHashProfile.test)
    try:
        weak = await weak_hasher.hash(PASSWORD)
    finally:
        weak_hasher.close()
    assert "m=8,t=1,p=1" in weak
    settings = make_settings(database_url, password_hash_profile="owasp")
    async for harness in start_harness(settings):
        for old_hash in (BcryptHasher().hash(PASSWORD), weak):
            email = await harness.create_user()
            async with harness.ctx.engine.begin() as conn:
                user = await user_repo.get_by_email(conn, email)
                assert user is not None
                await user_repo.set_password_hash(conn, user.id, old_hash, now=None)
            await harness.login(email)
            upgraded = await _stored_hash(harness, email)
            assert upgraded.startswith("$argon2id$")
            assert "m=19456,t=2,p=1" in upgraded
            await harness.login(email)  # the upgraded hash verifies
            assert await _stored_hash(harness, email) == upgraded  # and is not replaced again


async def test_device_sessions_list_and_revoke(harness: Harness) -> None:
    email = await harness.create_user()
    phone = await harness.login(email, device_name="phone")
    laptop = await harness.login(email, device_name="laptop")
    listed = await harness.client.get("/auth/sessions", headers=bearer(laptop["access_token"]))
    assert listed.status_code == 200
    by_id = {s["id"]: s for s in listed.json()}
    assert by_id[laptop["session"]["id"]]["current"] is True
    assert by_id[phone["session"]["id"]]["current"] is False
    assert by_id[phone["session"]["id"]]["device_name"] == "phone"
    assert by_id[phone["session"]["id"]]["ip"] == "203.0.113.7"
    for key in (
        "user_agent",
        "created_at",
        "last_active_at",
        "idle_expires_at",
        "absolute_expires_at",
    ):
        assert key in by_id[phone["session"]["id"]]

    revoke = await harness.client.delete(
        f"/auth/sessions/{phone['session']['id']}", headers=bearer(laptop["access_token"])
    )
    assert revoke.status_code == 204
    me = await harness.client.get("/auth/me", headers=bearer(phone["access_token"]))
    assert error_code(me) == "session_revoked"
    assert error_code(await harness.refresh(phone["refresh_token"])) == "session_revoked"
    again = await harness.client.delete(
        f"/auth/sessions/{phone['session']['id']}", headers=bearer(laptop["access_token"])
    )
    assert error_code(again) == "session_not_found"


async def test_users_cannot_see_or_revoke_each_others_sessions(harness: Harness) -> None:
    alice = await harness.login(await harness.create_user())
    bob = await harness.login(await harness.create_user())
    seen = await harness.client.get("/auth/sessions", headers=bearer(bob["access_token"]))
    assert alice["session"]["id"] not in {s["id"] for s in seen.json()}
    attempt = await harness.client.delete(
        f"/auth/sessions/{alice['session']['id']}", headers=bearer(bob["access_token"])
    )
    assert attempt.status_code == 404
    assert error_code(attempt) == "session_not_found"
    assert (
        await harness.client.get("/auth/me", headers=bearer(alice["access_token"]))
    ).status_code == 200
    bad_id = await harness.client.delete(
        "/auth/sessions/not-a-uuid", headers=bearer(bob["access_token"])
    )
    assert bad_id.status_code == 422


async def test_password_change_revokes_other_sessions(harness: Harness) -> None:
    email = await harness.create_user()
    here = await harness.login(email)
    other = await harness.login(email)
    wrong = await harness.client.post(
        "/auth/password",
        json={"current_password": "not it at all", "new_password": "a new password"},
        headers=bearer(here["access_token"]),
    )
    assert wrong.status_code == 403
    assert error_code(wrong) == "invalid_current_password"
    short = await harness.client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": "short"},
        headers=bearer(here["access_token"]),
    )
    assert short.status_code == 422
    changed = await harness.client.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": "a new password"},
        headers=bearer(here["access_token"]),
    )
    assert changed.status_code == 204
    assert (
        await harness.client.get("/auth/me", headers=bearer(here["access_token"]))
    ).status_code == 200
    assert (
        error_code(await harness.client.get("/auth/me", headers=bearer(other["access_token"])))
        == "session_revoked"
    )
    await harness.login(email, "a new password")
    old = await harness.client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert error_code(old) == "invalid_credentials"


async def test_admin_routes(harness: Harness) -> None:
    admin = await harness.login(await harness.create_user(role="admin"))
    target_email = await harness.create_user()
    target = await harness.login(target_email)
    target_id = await _user_id(harness, target_email)
    plain = await harness.login(await harness.create_user())

    for method, path in (
        ("GET", f"/admin/users/{target_id}/sessions"),
        ("POST", f"/admin/users/{target_id}/deactivate"),
        ("POST", f"/admin/users/{target_id}/activate"),
    ):
        denied = await harness.client.request(method, path, headers=bearer(plain["access_token"]))
        assert denied.status_code == 403, path
        assert error_code(denied) == "forbidden"

    sessions = await harness.client.get(
        f"/admin/users/{target_id}/sessions", headers=bearer(admin["access_token"])
    )
    assert [s["id"] for s in sessions.json()] == [target["session"]["id"]]
    off = await harness.client.post(
        f"/admin/users/{target_id}/deactivate", headers=bearer(admin["access_token"])
    )
    assert off.json()["is_active"] is False
    assert (
        error_code(await harness.client.get("/auth/me", headers=bearer(target["access_token"])))
        == "session_revoked"
    )
    assert error_code(await harness.refresh(target["refresh_token"])) == "session_revoked"
    on = await harness.client.post(
        f"/admin/users/{target_id}/activate", headers=bearer(admin["access_token"])
    )
    assert on.json()["is_active"] is True
    await harness.login(target_email)
    missing = await harness.client.get(
        f"/admin/users/{uuid.uuid4()}/sessions", headers=bearer(admin["access_token"])
    )
    assert missing.status_code == 404
    assert error_code(missing) == "user_not_found"


async def test_registration(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url)):
        closed = await h.client.post(
            "/auth/register", json={"email": "new@example.com", "password": PASSWORD}
        )
        assert closed.status_code == 403
        assert error_code(closed) == "registration_closed"
    async for h in start_harness(make_settings(database_url, allow_registration=True)):
        email = f"New-{uuid.uuid4().hex[:8]}@Example.COM"
        created = await h.client.post("/auth/register", json={"email": email, "password": PASSWORD})
        assert created.status_code == 201, created.text
        assert created.json()["email"] == email.lower()
        await h.login(email.lower())
        dup = await h.client.post("/auth/register", json={"email": email, "password": PASSWORD})
        assert dup.status_code == 409
        assert error_code(dup) == "email_taken"
        bad = await h.client.post(
            "/auth/register", json={"email": "not-an-email", "password": PASSWORD}
        )
        assert error_code(bad) == "invalid_email"
        short = await h.client.post(
            "/auth/register", json={"email": "x@example.com", "password": "short"}
        )
        assert short.status_code == 422


async def test_email_is_normalised_including_idna(harness: Harness) -> None:
    email = f"idn-{uuid.uuid4().hex[:6]}@bücher.example"
    await harness.create_user(email=email)
    ascii_form = email.replace("bücher", "xn--bcher-kva")
    await harness.login(ascii_form.upper())
    await harness.login(f"  {email} ")


async def test_short_password_on_login_is_a_clear_422(harness: Harness) -> None:
    response = await harness.client.post(
        "/auth/login", json={"email": "a@example.com", "password": "short"}
    )
    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    await asyncio.sleep(0)


async def test_token_endpoint_shares_the_login_limits(database_url: str) -> None:
    settings = make_settings(database_url, rate_limits_enabled=True, rate_limit_login_ip="2/hour")
    async for h in start_harness(settings):
        email = await h.create_user()
        form = {"grant_type": "password", "username": email, "password": "not the password"}
        statuses = [(await h.client.post("/auth/token", data=form)).status_code for _ in range(3)]
        assert statuses == [400, 400, 429]
        limited = await h.client.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert error_code(limited) == "rate_limited"
