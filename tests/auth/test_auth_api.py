"""The API contract of issue 2, through the real app, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import func, select

from app.audit.models import AuditEvent
from app.core.middleware import RequestIds
from app.sessions.models import Session
from tests.conftest import PASSWORD, Harness, bearer, make_settings, start_harness


def _error(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


async def _audit_events(h: Harness, **where: Any) -> list[str]:
    t = AuditEvent.__table__
    stmt = select(t.c.event).order_by(t.c.id)
    for column, value in where.items():
        stmt = stmt.where(t.c[column] == value)
    async with h.ctx.engine.connect() as conn:
        return [row[0] for row in await conn.execute(stmt)]


async def test_login_returns_token_pair_and_session(harness: Harness) -> None:
    email = await harness.create_user()
    response = await harness.client.post(
        "/auth/login", json={"email": email, "password": PASSWORD, "device_name": "laptop"}
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    assert len(body["refresh_token"]) >= 43  # 256 bits, base64url
    assert body["refresh_expires_in"] == 3600
    session = body["session"]
    uuid.UUID(session["id"])
    idle = datetime.fromisoformat(session["idle_expires_at"])
    absolute = datetime.fromisoformat(session["absolute_expires_at"])
    assert (idle - harness.clock.now()).total_seconds() == 3600
    assert (absolute - harness.clock.now()).total_seconds() == 8 * 3600


async def test_login_is_case_and_whitespace_insensitive_for_email(harness: Harness) -> None:
    email = await harness.create_user()
    await harness.login(f"  {email.upper()} ")


async def test_failed_logins_are_indistinguishable(harness: Harness) -> None:
    email = await harness.create_user()
    inactive = await harness.create_user()
    await harness.set_active(inactive, active=False)
    attempts = [
        {"email": email, "password": "wrong password!"},
        {"email": "nobody-" + email, "password": PASSWORD},
        {"email": inactive, "password": PASSWORD},
    ]
    responses = [await harness.client.post("/auth/login", json=a) for a in attempts]
    for response in responses:
        assert response.status_code == 401
        assert _error(response) == "invalid_credentials"
    assert len({r.text for r in responses}) == 1
    headers = [
        {k: v for k, v in r.headers.items() if k not in {"x-request-id", "date"}} for r in responses
    ]
    assert headers[0] == headers[1] == headers[2]
    assert "WWW-Authenticate" in responses[0].headers


async def test_failed_login_is_audited_without_secrets(harness: Harness) -> None:
    email = await harness.create_user()
    await harness.client.post("/auth/login", json={"email": email, "password": "hunter2hunter2"})
    async with harness.ctx.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(AuditEvent.__table__).where(AuditEvent.__table__.c.event == "login.failed")
            )
        ).all()
    assert rows
    assert all("hunter2hunter2" not in str(tuple(row)) for row in rows)


async def test_each_login_creates_a_new_session_and_keeps_the_others(harness: Harness) -> None:
    email = await harness.create_user()
    first = await harness.login(email, device_name="phone")
    second = await harness.login(email, device_name="laptop")
    assert first["session"]["id"] != second["session"]["id"]
    for tokens in (first, second):
        me = await harness.client.get("/auth/me", headers=bearer(tokens["access_token"]))
        assert me.status_code == 200


async def test_refresh_rotates_and_returns_same_shape(harness: Harness) -> None:
    email = await harness.create_user()
    tokens = await harness.login(email)
    response = await harness.refresh(tokens["refresh_token"])
    assert response.status_code == 200
    body = response.json()
    assert body["refresh_token"] != tokens["refresh_token"]
    assert body["session"]["id"] == tokens["session"]["id"]
    assert response.headers["cache-control"] == "no-store"
    me = await harness.client.get("/auth/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200


async def test_unknown_refresh_token_is_rejected(harness: Harness) -> None:
    response = await harness.refresh("not-a-real-token")
    assert response.status_code == 401
    assert _error(response) == "refresh_token_invalid"
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_logout_revokes_access_and_refresh_tokens(harness: Harness) -> None:
    email = await harness.create_user()
    tokens = await harness.login(email)
    response = await harness.client.post("/auth/logout", headers=bearer(tokens["access_token"]))
    assert response.status_code == 204
    me = await harness.client.get("/auth/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 401
    assert _error(me) == "session_revoked"
    refreshed = await harness.refresh(tokens["refresh_token"])
    assert refreshed.status_code == 401
    assert _error(refreshed) == "session_revoked"
    assert "logout" in await _audit_events(harness, session_id=uuid.UUID(tokens["session"]["id"]))


async def test_logout_is_post_only(harness: Harness) -> None:
    email = await harness.create_user()
    tokens = await harness.login(email)
    response = await harness.client.get("/auth/logout", headers=bearer(tokens["access_token"]))
    assert response.status_code == 405
    assert _error(response) == "method_not_allowed"


async def test_logout_all_revokes_every_session_of_the_user_only(harness: Harness) -> None:
    email = await harness.create_user()
    other = await harness.login(await harness.create_user())
    sessions = [await harness.login(email) for _ in range(3)]
    response = await harness.client.post(
        "/auth/logout-all", headers=bearer(sessions[0]["access_token"])
    )
    assert response.status_code == 204
    for tokens in sessions:
        me = await harness.client.get("/auth/me", headers=bearer(tokens["access_token"]))
        assert _error(me) == "session_revoked"
        assert (await harness.refresh(tokens["refresh_token"])).status_code == 401
    still = await harness.client.get("/auth/me", headers=bearer(other["access_token"]))
    assert still.status_code == 200


async def test_protected_routes_require_a_token(harness: Harness) -> None:
    for method, path in (
        ("GET", "/auth/me"),
        ("GET", "/auth/session-status"),
        ("POST", "/auth/logout"),
        ("POST", "/auth/logout-all"),
    ):
        response = await harness.client.request(method, path)
        assert response.status_code == 401, path
        assert _error(response) == "not_authenticated"
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_session_status_shape_and_it_does_not_slide(harness: Harness) -> None:
    email = await harness.create_user()
    tokens = await harness.login(email)
    harness.clock.advance(100)
    response = await harness.client.get(
        "/auth/session-status", headers=bearer(tokens["access_token"])
    )
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["message"] == "Session and token are valid"
    assert body["session"]["user"] == email
    assert body["session"]["idle_seconds_remaining"] == 3500
    assert body["session"]["absolute_seconds_remaining"] == 8 * 3600 - 100
    assert body["token"] == {"valid": True, "expires_in": 200}
    refresh_after = datetime.fromisoformat(body["refresh_after"])
    server_time = datetime.fromisoformat(body["server_time"])
    assert 0 < (refresh_after - server_time).total_seconds() < 200
    assert await _idle_deadline(harness, tokens) == datetime.fromisoformat(
        tokens["session"]["idle_expires_at"]
    )


async def _idle_deadline(h: Harness, tokens: dict[str, Any]) -> datetime:
    t = Session.__table__
    async with h.ctx.engine.connect() as conn:
        value = (
            await conn.execute(
                select(t.c.idle_expires_at).where(t.c.id == uuid.UUID(tokens["session"]["id"]))
            )
        ).scalar_one()
    assert isinstance(value, datetime)
    return value


async def test_activity_slides_idle_deadline_and_writes_are_coalesced(harness: Harness) -> None:
    email = await harness.create_user()
    tokens = await harness.login(email)
    start = datetime.fromisoformat(tokens["session"]["idle_expires_at"])
    harness.clock.advance(2)  # inside the touch interval: no write
    assert (
        await harness.client.get("/auth/me", headers=bearer(tokens["access_token"]))
    ).status_code == 200
    assert await _idle_deadline(harness, tokens) == start
    harness.clock.advance(10)  # beyond it: the deadline moves to now + idle timeout
    assert (
        await harness.client.get("/auth/me", headers=bearer(tokens["access_token"]))
    ).status_code == 200
    slid = await _idle_deadline(harness, tokens)
    assert (slid - start).total_seconds() == 12


async def test_idle_session_expires_and_activity_keeps_it_alive(harness: Harness) -> None:
    email = await harness.create_user()
    tokens = await harness.login(email)
    token = tokens["access_token"]
    # Work for 3 hours (idle timeout is 1 hour), refreshing the access token as a client does.
    for _ in range(36):
        harness.clock.advance(290)
        refreshed = await harness.refresh(tokens["refresh_token"])
        assert refreshed.status_code == 200
        tokens = refreshed.json()
        token = tokens["access_token"]
        assert (await harness.client.get("/auth/me", headers=bearer(token))).status_code == 200
    # Then go idle past the deadline.
    harness.clock.advance(3600 + 1)
    me = await harness.client.get("/auth/me", headers=bearer(token))
    assert me.status_code == 401
    assert _error(me) in {"session_expired", "token_expired"}
    refreshed = await harness.refresh(tokens["refresh_token"])
    assert refreshed.status_code == 401
    assert _error(refreshed) == "session_expired"


async def test_activity_just_before_idle_deadline_extends_it(harness: Harness) -> None:
    email = await harness.create_user()
    tokens = await harness.login(email)
    harness.clock.advance(3599)
    refreshed = await harness.refresh(tokens["refresh_token"])
    assert refreshed.status_code == 200
    harness.clock.advance(3599)
    assert (await harness.refresh(refreshed.json()["refresh_token"])).status_code == 200


async def test_absolute_deadline_holds_whatever_the_activity(harness: Harness) -> None:
    email = await harness.create_user()
    tokens = await harness.login(email)
    absolute = tokens["session"]["absolute_expires_at"]
    for _ in range(8 * 12 - 1):  # every 5 minutes for just under 8 hours
        harness.clock.advance(300)
        response = await harness.refresh(tokens["refresh_token"])
        assert response.status_code == 200, response.text
        tokens = response.json()
        assert tokens["session"]["absolute_expires_at"] == absolute
        assert tokens["session"]["idle_expires_at"] <= absolute
    harness.clock.advance(300)
    response = await harness.refresh(tokens["refresh_token"])
    assert response.status_code == 401
    assert _error(response) == "session_expired"


async def test_expired_access_token_says_token_expired(harness: Harness) -> None:
    email = await harness.create_user()
    tokens = await harness.login(email)
    harness.clock.advance(300 + 31)  # ttl + leeway
    me = await harness.client.get("/auth/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 401
    assert _error(me) == "token_expired"
    assert 'error="invalid_token"' in me.headers["www-authenticate"]


async def test_me_returns_the_account(harness: Harness) -> None:
    email = await harness.create_user(role="admin")
    tokens = await harness.login(email)
    me = await harness.client.get("/auth/me", headers=bearer(tokens["access_token"]))
    body = me.json()
    assert body["email"] == email
    assert body["role"] == "admin"
    assert body["is_active"] is True


async def test_deactivation_and_password_change_revoke_sessions(harness: Harness) -> None:
    for change in ("deactivate", "password"):
        email = await harness.create_user()
        tokens = await harness.login(email)
        if change == "deactivate":
            await harness.set_active(email, active=False)
        else:
            await harness.set_password(email, "a brand new password")
        me = await harness.client.get("/auth/me", headers=bearer(tokens["access_token"]))
        assert _error(me) == "session_revoked"
        assert _error(await harness.refresh(tokens["refresh_token"])) == "session_revoked"


async def test_health_endpoints(harness: Harness) -> None:
    assert (await harness.client.get("/healthz")).json() == {"status": "ok"}
    ready = await harness.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["database"] == "ok"


async def test_request_id_is_echoed_or_generated(harness: Harness) -> None:
    response = await harness.client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    generated = await harness.client.get("/healthz", headers={"X-Request-ID": "bad id\n"})
    assert generated.headers["x-request-id"] != "bad id\n"
    assert len(generated.headers["x-request-id"]) == 32


def test_generated_request_ids_are_random_unique_and_differ_after_fork() -> None:
    ids = RequestIds()
    pairs = [ids.next() for _ in range(1000)]  # several refills of the random buffer
    assert all(value == text.encode() for text, value in pairs)  # the header value, ready
    many = [text for text, _ in pairs]
    assert len(set(many)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in many)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, then exit without running pytest's teardown
        os.write(write_end, ids.next()[1])
        os._exit(0)
    os.close(write_end)
    child_id = os.read(read_end, 64).decode()
    os.waitpid(pid, 0)
    assert child_id not in {ids.next()[0], *many}  # a child does not replay the parent's ids


async def test_audit_trail_records_login_refresh_logout(harness: Harness) -> None:
    email = await harness.create_user()
    tokens = await harness.login(email)
    tokens2 = (await harness.refresh(tokens["refresh_token"])).json()
    await harness.client.post("/auth/logout", headers=bearer(tokens2["access_token"]))
    events = await _audit_events(harness, session_id=uuid.UUID(tokens["session"]["id"]))
    assert events == ["login.succeeded", "refresh.rotated", "logout"]


async def test_sessions_table_counts_one_row_per_login(harness: Harness) -> None:
    email = await harness.create_user()
    logins = [await harness.login(email) for _ in range(3)]
    t = Session.__table__
    ids = [uuid.UUID(tokens["session"]["id"]) for tokens in logins]
    async with harness.ctx.engine.connect() as conn:
        count = select(func.count()).select_from(t).where(t.c.id.in_(ids), t.c.revoked_at.is_(None))
        assert (await conn.execute(count)).scalar_one() == 3


async def test_only_successful_requests_slide(harness: Harness) -> None:
    email = await harness.create_user()
    tokens = await harness.login(email)
    start = await _idle_deadline(harness, tokens)
    harness.clock.advance(60)
    for method, path in (
        ("GET", "/auth/session-status"),  # passive by design
        ("GET", "/auth/session-status/"),  # redirect, not activity
        ("GET", "/no-such-route"),  # 404
        ("DELETE", "/auth/me"),  # 405
    ):
        response = await harness.client.request(
            method, path, headers=bearer(tokens["access_token"])
        )
        assert response.status_code in {200, 307, 404, 405}, (path, response.text)
    assert await _idle_deadline(harness, tokens) == start
    assert (
        await harness.client.get("/auth/me", headers=bearer(tokens["access_token"]))
    ).status_code == 200
    assert (await _idle_deadline(harness, tokens) - start).total_seconds() == 60


async def test_routes_work_under_a_deployment_prefix(database_url: str) -> None:
    settings = make_settings(database_url)
    async for h in start_harness(settings, root_path="/api"):
        email = await h.create_user()
        tokens = (
            await h.client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
        ).json()
        expired_header = bearer("not-a-token")
        # Refresh is public: a stale Authorization header must not get in its way.
        refreshed = await h.client.post(
            "/api/auth/refresh",
            json={"refresh_token": tokens["refresh_token"]},
            headers=expired_header,
        )
        assert refreshed.status_code == 200, refreshed.text
        assert refreshed.headers["cache-control"] == "no-store"
