"""Issue 17 part 1: every end of a session reaches each back-channel logout client once, as
an OpenID Connect Back-Channel Logout 1.0 logout token, through the outbox: written in the
revoking transaction (a rollback sends nothing), delivered by the worker with retries that
survive a receiver outage and a restart, given up (and audited) after the configured time or
at once on a 400, each attempt bounded by the timeout. Real receiver (uvicorn), both
databases."""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import jwt
import pytest

from app.core.db import UnitOfWork
from tests.conftest import PASSWORD, Harness, bearer
from tests.outbox.conftest import (
    CLIENTS,
    LOGOUT_EVENT,
    Services,
    audit_events,
    outbox_rows,
    verified_claims,
)
from tests.support.receiver import Receiver, eventually

Ended = list[dict[str, Any]]  # the login bodies of the sessions an action ends


def _sub(login: dict[str, Any]) -> str:
    claims = jwt.decode(login["access_token"], options={"verify_signature": False})
    sub: str = claims["sub"]
    return sub


def _ok(response: httpx.Response, status: int = 204) -> None:
    assert response.status_code == status, response.text


async def _logout(h: Harness, email: str) -> Ended:
    a = await h.login(email)
    _ok(await h.client.post("/auth/logout", headers=bearer(a["access_token"])))
    return [a]


async def _logout_all(h: Harness, email: str) -> Ended:
    a, b = await h.login(email), await h.login(email)
    _ok(await h.client.post("/auth/logout-all", headers=bearer(a["access_token"])))
    return [a, b]


async def _delete_session(h: Harness, email: str) -> Ended:
    a, b = await h.login(email), await h.login(email)
    path = f"/auth/sessions/{b['session']['id']}"
    _ok(await h.client.delete(path, headers=bearer(a["access_token"])))
    return [b]


async def _deactivation(h: Harness, email: str) -> Ended:
    a = await h.login(email)
    admin = await h.login(await h.create_user(role="admin"))
    path = f"/admin/users/{_sub(a)}/deactivate"
    _ok(await h.client.post(path, headers=bearer(admin["access_token"])), 200)
    return [a]


async def _password_change(h: Harness, email: str) -> Ended:
    a, b = await h.login(email), await h.login(email)
    body = {"current_password": PASSWORD, "new_password": "a brand new passphrase"}
    _ok(await h.client.post("/auth/password", json=body, headers=bearer(a["access_token"])))
    return [b]  # the session making the change is kept


async def _theft(h: Harness, email: str) -> Ended:
    a = await h.login(email)
    _ok(await h.refresh(a["refresh_token"]), 200)
    h.clock.advance(31)  # past REFRESH_REUSE_INTERVAL: a replay now is theft
    response = await h.refresh(a["refresh_token"])
    assert response.json()["error"]["code"] == "refresh_token_reused"
    return [a]


async def _password_guessing(h: Harness, email: str) -> Ended:
    a = await h.login(email)
    body = {"current_password": "not the password", "new_password": "a brand new passphrase"}
    for _ in range(2):  # PASSWORD_CHANGE_MAX_FAILURES=2 below
        await h.client.post("/auth/password", json=body, headers=bearer(a["access_token"]))
    me = await h.client.get("/auth/me", headers=bearer(a["access_token"]))
    assert me.json()["error"]["code"] == "session_revoked"
    return [a]


async def _operator_deactivation(h: Harness, email: str) -> Ended:
    a, b = await h.login(email), await h.login(email)
    assert await h.set_active(email, active=False) == 2  # as `users deactivate` does
    return [a, b]


async def _operator_password_reset(h: Harness, email: str) -> Ended:
    a = await h.login(email)
    assert await h.set_password(email, "an operator's new passphrase") == 1
    return [a]


ENDS: dict[str, Callable[[Harness, str], Awaitable[Ended]]] = {
    "logout": _logout,
    "logout_all": _logout_all,
    "delete_session": _delete_session,
    "admin_deactivation": _deactivation,
    "operator_deactivation": _operator_deactivation,
    "operator_password_reset": _operator_password_reset,
    "password_change": _password_change,
    "theft": _theft,
    "password_guessing": _password_guessing,
}


@pytest.mark.parametrize("end", sorted(ENDS))
async def test_every_end_of_a_session_sends_one_logout_token_per_client(
    services: Services, receiver: Receiver, end: str
) -> None:
    h = await services.start(password_change_max_failures=2)
    email = await h.create_user()
    ended = await ENDS[end](h, email)
    expected = {(a["session"]["id"], _sub(a), client) for a in ended for client in CLIENTS}
    sids = [a["session"]["id"] for a in ended]
    await eventually(lambda: len(receiver.about(*sids)) >= len(expected), what="the logout tokens")

    seen = set()
    for arrival in receiver.about(*sids):
        assert arrival.content_type == "application/x-www-form-urlencoded"
        [token] = arrival.form["logout_token"]
        audience = arrival.path.rsplit("/", 1)[1]
        claims = await verified_claims(h, token, audience)
        assert claims["events"] == {LOGOUT_EVENT: {}}
        assert "nonce" not in claims
        assert 0 < claims["exp"] - claims["iat"] <= 120
        seen.add((claims["sid"], claims["sub"], claims["aud"]))
    assert seen == expected
    tokens = [t for r in receiver.about(*sids) for t in r.form["logout_token"]]
    jtis = {jwt.decode(t, options={"verify_signature": False})["jti"] for t in tokens}
    assert len(jtis) == len(expected)

    # Exactly once: every row delivered at its first attempt, and nothing more arrives.
    for sid in {a["session"]["id"] for a in ended}:
        await eventually(functools.partial(_all_delivered, h, sid), what="delivered")
    await h.ctx.outbox.run_once()
    rows = [r for a in ended for r in await outbox_rows(h, a["session"]["id"])]
    assert len(rows) == len(expected)
    assert all(r.attempts == 1 for r in rows)
    assert len(receiver.about(*sids)) == len(expected)


async def test_a_rolled_back_revocation_sends_nothing(
    services: Services, receiver: Receiver
) -> None:
    h = await services.start()
    a = await h.login(await h.create_user())
    session_id = uuid.UUID(a["session"]["id"])
    uow = UnitOfWork(h.ctx.engine)
    revoked = await h.ctx.sessions.revoke(
        uow, now=h.clock.now(), reason="logout", session_id=session_id
    )
    assert revoked == [session_id]
    await uow.finish(commit=False)

    await h.ctx.outbox.run_once()
    assert await outbox_rows(h, session_id) == []
    assert receiver.about(session_id) == []
    me = await h.client.get("/auth/me", headers=bearer(a["access_token"]))
    assert me.status_code == 200

    # The same revocation committed is sent (the control: this test can fail).
    uow = UnitOfWork(h.ctx.engine)
    await h.ctx.sessions.revoke(uow, now=h.clock.now(), reason="logout", session_id=session_id)
    await uow.finish(commit=True)
    await eventually(lambda: len(receiver.about(session_id)) == len(CLIENTS), what="the tokens")


async def _failed_attempts(h: Harness, session_id: str, error: str) -> bool:
    rows = await outbox_rows(h, session_id)
    return len(rows) == len(CLIENTS) and all(r.last_error == error for r in rows)


@pytest.mark.parametrize("failure", ["receiver_down", "status_500"])
async def test_a_receiver_failing_gets_the_logout_once_it_is_back(
    services: Services, receiver: Receiver, failure: str
) -> None:
    h = await services.start()
    a = await h.login(await h.create_user())
    if failure == "receiver_down":
        await receiver.stop()
    else:
        receiver.status = 500
    _ok(await h.client.post("/auth/logout", headers=bearer(a["access_token"])))
    error = "connect_error" if failure == "receiver_down" else "status_500"
    sid = a["session"]["id"]
    await eventually(lambda: _failed_attempts(h, sid, error), what=error)
    failed = len(receiver.about(sid))

    if failure == "receiver_down":
        await receiver.start()
    else:
        receiver.status = 200
    h.clock.advance(3)  # past the retry (OUTBOX_RETRY_MAX=2)
    h.ctx.outbox.wake()
    await eventually(lambda: len(receiver.about(sid)) == failed + len(CLIENTS), what="the retry")
    for arrival in receiver.about(sid)[failed:]:
        [token] = arrival.form["logout_token"]
        claims = await verified_claims(h, token, arrival.path.rsplit("/", 1)[1])
        assert claims["sid"] == sid
    await eventually(lambda: _all_delivered(h, sid), what="the deliveries recorded")
    assert {r.attempts for r in await outbox_rows(h, sid)} == {2}


async def test_a_restarted_service_delivers_what_was_pending(
    services: Services, receiver: Receiver
) -> None:
    first = await services.start()
    a = await first.login(await first.create_user())
    await receiver.stop()
    _ok(await first.client.post("/auth/logout", headers=bearer(a["access_token"])))
    sid = a["session"]["id"]
    await eventually(lambda: _failed_attempts(first, sid, "connect_error"), what="a failure")
    await services.stop(first)  # the replica goes away with the notifications undelivered

    await receiver.start()
    second = await services.start()  # a new instance: nothing but the table remembers
    second.clock.advance(3)
    second.ctx.outbox.wake()
    await eventually(lambda: len(receiver.about(sid)) == len(CLIENTS), what="the delivery")
    await eventually(lambda: _all_delivered(second, sid), what="the deliveries recorded")


async def test_giving_up_after_the_configured_time_is_audited(
    services: Services, receiver: Receiver
) -> None:
    h = await services.start(backchannel_logout_give_up_after=60)
    a = await h.login(await h.create_user())
    receiver.status = 503
    _ok(await h.client.post("/auth/logout", headers=bearer(a["access_token"])))
    sid = a["session"]["id"]
    await eventually(lambda: _failed_attempts(h, sid, "status_503"), what="a failure")
    assert await audit_events(h, "backchannel.failed", sid) == []

    h.clock.advance(61)  # past BACKCHANNEL_LOGOUT_GIVE_UP_AFTER: one last attempt, then no more
    h.ctx.outbox.wake()

    async def given_up() -> bool:
        return all(r.gave_up_at is not None for r in await outbox_rows(h, sid))

    await eventually(given_up, what="the give-up")
    events = await audit_events(h, "backchannel.failed", sid)
    assert sorted(e.details["client_id"] for e in events) == sorted(CLIENTS)
    assert {e.details["reason"] for e in events} == {"expired"}
    assert {e.details["last_error"] for e in events} == {"status_503"}
    assert {str(e.user_id) for e in events} == {_sub(a)}
    attempts = len(receiver.about(sid))
    h.clock.advance(3600)
    await h.ctx.outbox.run_once()
    assert len(receiver.about(sid)) == attempts


async def test_a_400_is_definitive_given_up_and_audited_at_once(
    services: Services, receiver: Receiver
) -> None:
    h = await services.start()
    a = await h.login(await h.create_user())
    receiver.status = 400  # the receiver refuses the token (spec §2.8): no retry can help
    _ok(await h.client.post("/auth/logout", headers=bearer(a["access_token"])))
    sid = a["session"]["id"]

    async def given_up() -> bool:
        rows = await outbox_rows(h, sid)
        return len(rows) == len(CLIENTS) and all(r.gave_up_at is not None for r in rows)

    await eventually(given_up, what="the give-up")
    rows = await outbox_rows(h, sid)
    assert {(r.attempts, r.last_error) for r in rows} == {(1, "status_400")}
    events = await audit_events(h, "backchannel.failed", sid)
    assert {e.details["reason"] for e in events} == {"status_400"}
    assert len(events) == len(CLIENTS)


async def test_a_hanging_receiver_is_bounded_by_the_timeout(
    services: Services, receiver: Receiver
) -> None:
    h = await services.start(backchannel_logout_timeout=0.5)
    a = await h.login(await h.create_user())
    receiver.hang = True
    started = time.monotonic()
    _ok(await h.client.post("/auth/logout", headers=bearer(a["access_token"])))
    sid = a["session"]["id"]
    await eventually(lambda: _failed_attempts(h, sid, "timeout"), within=5, what="a timeout")
    assert time.monotonic() - started < 2.0
    receiver.release()
    h.clock.advance(3)
    h.ctx.outbox.wake()

    async def delivered() -> bool:
        return all(r.delivered_at is not None for r in await outbox_rows(h, sid))

    await eventually(delivered, what="the delivery after the hang")


async def test_a_hanging_receiver_does_not_hold_up_the_others(
    services: Services, receiver: Receiver
) -> None:
    """While one client's receiver holds a delivery until the timeout, later notifications
    to the other client are not held up: each delivery has its own slot in the worker."""
    h = await services.start(backchannel_logout_timeout=4.0)
    email = await h.create_user()
    first, second = await h.login(email), await h.login(email)
    sids = [first["session"]["id"], second["session"]["id"]]
    receiver.hang, receiver.hang_only = True, "/billing"
    _ok(await h.client.post("/auth/logout", headers=bearer(first["access_token"])))
    await eventually(lambda: receiver.hanging == 1, what="billing's receiver to hang")

    started = time.monotonic()
    _ok(await h.client.post("/auth/logout", headers=bearer(second["access_token"])))
    await eventually(lambda: receiver.hanging == 2, what="the second billing delivery")
    await eventually(
        lambda: sum(r.path.endswith("/notes") for r in receiver.about(*sids)) == 2,
        what="both notes deliveries",
    )
    assert time.monotonic() - started < 2.0  # well before the first billing attempt times out
    receiver.release()
    for login in (first, second):  # nothing left pending for later tests' workers
        await eventually(functools.partial(_all_delivered, h, login["session"]["id"]))


async def test_metrics_count_deliveries_and_pending(services: Services, receiver: Receiver) -> None:
    h = await services.start()
    a = await h.login(await h.create_user())
    _ok(await h.client.post("/auth/logout", headers=bearer(a["access_token"])))
    await eventually(lambda: len(receiver.about(a["session"]["id"])) == 2, what="the tokens")
    await eventually(lambda: _all_delivered(h, a["session"]["id"]), what="the deliveries recorded")
    text = (await h.client.get("/metrics")).text
    assert 'authsvc_outbox_delivery_seconds_count{kind="backchannel_logout"}' in text
    assert 'authsvc_outbox_pending{kind="backchannel_logout"}' in text


async def _all_delivered(h: Harness, sid: str) -> bool:
    rows = await outbox_rows(h, sid)
    return bool(rows) and all(r.delivered_at is not None for r in rows)
