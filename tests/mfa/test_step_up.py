"""Authentication context and step-up (docs/mfa.md): the session's acr is "mfa" for STEP_UP_TTL
after a two-step login or a step-up, access tokens and session-status say so, and routes that
require a recent second factor answer 401 insufficient_authentication (RFC 9470) until a
step-up. Also: the two-step login's challenge is bound to the first step's DPoP key."""

from __future__ import annotations

from typing import Any

from tests.conftest import Harness, bearer, error_code, make_settings, start_harness
from tests.dpop.test_routes import Client as DPoPClient
from tests.mfa.conftest import claims_of, code_at, enrol, events_of, first_step, second_step

STEP_UP_TTL = 900


async def _later(h: Harness, tokens: dict[str, Any], seconds: int) -> dict[str, str]:
    """`seconds` on (past the access token's life): the headers of a refreshed token."""
    h.clock.advance(seconds)
    refreshed = await h.refresh(tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    tokens.update(refreshed.json())
    return bearer(tokens["access_token"])


async def _mfa_login(h: Harness, email: str, secret: str) -> dict[str, Any]:
    h.clock.advance(30)  # past any step a code was used in
    answered = await second_step(h, await first_step(h, email), code=code_at(secret, h.clock.now()))
    assert answered.status_code == 200, answered.text
    tokens: dict[str, Any] = answered.json()
    return tokens


async def test_acr_falls_back_after_the_ttl_and_step_up_raises_it(harness: Harness) -> None:
    h = harness
    enrolled = await enrol(h)
    tokens = await _mfa_login(h, enrolled.email, enrolled.secret)
    session_id = tokens["session"]["id"]
    headers = await _later(h, tokens, STEP_UP_TTL + 1)
    assert claims_of(tokens["access_token"])["acr"] == "pwd"
    status = (await h.client.get("/auth/session-status", headers=headers)).json()["session"]
    assert (status["acr"], status["acr_expires_at"]) == ("pwd", None)

    code = code_at(enrolled.secret, h.clock.now())
    stepped = await h.client.post("/auth/step-up", json={"code": code}, headers=headers)
    assert stepped.status_code == 200, stepped.text
    body = stepped.json()
    assert (body["acr"], body["amr"]) == ("mfa", ["pwd", "otp", "mfa"])
    claims = claims_of(body["access_token"])
    assert claims["acr"] == "mfa"
    # auth_time: the latest authentication, so that RFC 9470's max_age accepts it.
    assert claims["auth_time"] == int(h.clock.now().timestamp())
    assert claims["sid"] == session_id
    status = (await h.client.get("/auth/session-status", headers=headers)).json()["session"]
    assert status["acr"] == "mfa"
    # ... for STEP_UP_TTL only.
    headers = await _later(h, tokens, STEP_UP_TTL + 1)
    status = (await h.client.get("/auth/session-status", headers=headers)).json()["session"]
    assert status["acr"] == "pwd"
    assert "mfa.step_up" in await events_of(h, enrolled.email)


async def test_a_wrong_step_up_code_changes_nothing_but_the_count(harness: Harness) -> None:
    h = harness
    enrolled = await enrol(h)
    tokens = await _mfa_login(h, enrolled.email, enrolled.secret)
    headers = await _later(h, tokens, STEP_UP_TTL + 1)
    wrong = code_at(enrolled.secret, h.clock.now(), steps=4)
    refused = await h.client.post("/auth/step-up", json={"code": wrong}, headers=headers)
    assert error_code(refused) == "invalid_mfa_code"
    status = (await h.client.get("/auth/session-status", headers=headers)).json()["session"]
    assert status["acr"] == "pwd"
    assert (await events_of(h, enrolled.email))[-1] == "mfa.check_failed"


async def test_step_up_without_a_factor_says_so(harness: Harness) -> None:
    h = harness
    tokens = await h.login(await h.create_user())
    refused = await h.client.post(
        "/auth/step-up", json={"code": "123456"}, headers=bearer(tokens["access_token"])
    )
    assert refused.status_code == 409
    assert error_code(refused) == "mfa_not_enabled"


async def test_admin_routes_can_require_a_recent_factor(database_url: str) -> None:
    settings = make_settings(database_url, admin_requires_step_up=True)
    async for h in start_harness(settings):
        enrolled = await enrol(h, role="admin")
        tokens = await _mfa_login(h, enrolled.email, enrolled.secret)
        headers = bearer(tokens["access_token"])
        assert (await h.client.get("/admin/users", headers=headers)).status_code == 200
        headers = await _later(h, tokens, STEP_UP_TTL + 1)
        refused = await h.client.get("/admin/users", headers=headers)
        assert refused.status_code == 401
        assert error_code(refused) == "insufficient_authentication"
        challenge = refused.headers["www-authenticate"]
        assert 'error="insufficient_user_authentication"' in challenge
        assert 'acr_values="mfa"' in challenge
        assert f'max_age="{STEP_UP_TTL}"' in challenge
        assert "POST /auth/step-up" in refused.json()["error"]["message"]
        code = code_at(enrolled.secret, h.clock.now())
        stepped = await h.client.post("/auth/step-up", json={"code": code}, headers=headers)
        assert stepped.status_code == 200
        assert (await h.client.get("/admin/users", headers=headers)).status_code == 200
        # An admin with no second factor is told to enrol one.
        plain = await h.login(await h.create_user(role="admin"))
        refused = await h.client.get("/admin/users", headers=bearer(plain["access_token"]))
        assert "POST /auth/mfa/totp" in refused.json()["error"]["message"]


async def test_password_change_can_require_a_recent_factor(database_url: str) -> None:
    settings = make_settings(database_url, password_change_requires_step_up=True)
    async for h in start_harness(settings):
        enrolled = await enrol(h)
        tokens = await _mfa_login(h, enrolled.email, enrolled.secret)
        headers = await _later(h, tokens, STEP_UP_TTL + 1)
        body = {
            "current_password": "correct horse battery staple",
            "new_password": "a new horse battery staple",
        }
        refused = await h.client.post("/auth/password", json=body, headers=headers)
        assert error_code(refused) == "insufficient_authentication"
        code = code_at(enrolled.secret, h.clock.now())
        assert (
            await h.client.post("/auth/step-up", json={"code": code}, headers=headers)
        ).status_code == 200
        assert (
            await h.client.post("/auth/password", json=body, headers=headers)
        ).status_code == 204


async def test_without_the_settings_no_step_up_is_asked(harness: Harness) -> None:
    h = harness
    admin = await h.login(await h.create_user(role="admin"))
    assert (
        await h.client.get("/admin/users", headers=bearer(admin["access_token"]))
    ).status_code == 200


async def test_the_challenge_is_bound_to_the_first_steps_dpop_key(harness: Harness) -> None:
    h = harness
    enrolled = await enrol(h)
    h.clock.advance(30)
    client = DPoPClient(h)
    first = await client.login(enrolled.email)
    assert first.status_code == 202, first.text
    challenge = first.json()["challenge"]
    code = code_at(enrolled.secret, h.clock.now())
    without_key = await second_step(h, challenge, code=code)
    assert error_code(without_key) == "mfa_challenge_invalid"  # and the challenge ends
    second = await client.login(enrolled.email)
    answered = await h.client.post(
        "/auth/login/mfa",
        json={"challenge": second.json()["challenge"], "code": code},
        headers={"DPoP": client.proof("POST", "/auth/login/mfa")},
    )
    assert answered.status_code == 200, answered.text
    assert answered.json()["token_type"] == "DPoP"
    assert "cnf" in claims_of(answered.json()["access_token"])
