"""Two-step login with an authenticator app (RFC 6238) or a recovery code, on both databases,
with the harness's frozen clock: enrolment, the challenge and its bounds, the code window and
single use, lockout, and the audit trail (docs/mfa.md)."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from tests.conftest import PASSWORD, Harness, bearer, error_code, make_settings, start_harness
from tests.mfa.conftest import (
    claims_of,
    code_at,
    enrol,
    events_of,
    first_step,
    mails_of,
    second_step,
)
from tests.support.cli import cli


async def test_enrolment_shows_the_secret_once_and_seals_it(harness: Harness) -> None:
    h = harness
    email = await h.create_user()
    tokens = await h.login(email)
    headers = bearer(tokens["access_token"])
    wrong = await h.client.post(
        "/auth/mfa/totp", json={"password": "not it at all"}, headers=headers
    )
    assert wrong.status_code == 403
    assert error_code(wrong) == "invalid_current_password"  # a session alone adds no factor
    began = await h.client.post("/auth/mfa/totp", json={"password": PASSWORD}, headers=headers)
    assert began.status_code == 201
    body = began.json()
    assert body["otpauth_uri"].startswith("otpauth://totp/authsvc:")
    assert f"secret={body['secret']}" in body["otpauth_uri"]
    assert body["qr_svg"].startswith("<svg")
    status = await h.client.get("/auth/mfa", headers=bearer(tokens["access_token"]))
    assert status.json() == {
        "totp": False,
        "totp_pending": True,
        "recovery_codes_left": 0,
        "passkeys": 0,
    }
    async with h.ctx.engine.connect() as conn:
        sealed = await conn.scalar(text("SELECT sealed_secret FROM totp_factors"))
    assert body["secret"] not in sealed
    # Not confirmed: a login still takes one step.
    assert "access_token" in await h.login(email)


async def test_a_wrong_first_code_is_refused_and_counted(harness: Harness) -> None:
    h = harness
    email = await h.create_user()
    tokens = await h.login(email)
    began = await h.client.post(
        "/auth/mfa/totp", json={"password": PASSWORD}, headers=bearer(tokens["access_token"])
    )
    wrong = code_at(began.json()["secret"], h.clock.now(), steps=5)
    confirmed = await h.client.post(
        "/auth/mfa/totp/confirm", json={"code": wrong}, headers=bearer(tokens["access_token"])
    )
    assert confirmed.status_code == 400
    assert error_code(confirmed) == "invalid_mfa_code"
    assert "mfa.check_failed" in await events_of(h, email)
    status = await h.client.get("/auth/mfa", headers=bearer(tokens["access_token"]))
    assert status.json()["totp"] is False


async def test_two_step_login_with_the_app(harness: Harness) -> None:
    h = harness
    enrolled = await enrol(h)
    assert len(set(enrolled.recovery_codes)) == 10
    assert len(await mails_of(h, "mfa_enabled", enrolled.email)) == 1  # the owner is told
    # Enrolling proved nothing about the session that did it: no raised acr.
    enrolling = bearer(enrolled.tokens["access_token"])
    status = await h.client.get("/auth/session-status", headers=enrolling)
    assert status.json()["session"]["acr"] == "pwd"
    h.clock.advance(30)  # the confirming code's step is spent
    challenge = await first_step(h, enrolled.email, device_name="phone")
    answered = await second_step(h, challenge, code=code_at(enrolled.secret, h.clock.now()))
    assert answered.status_code == 200, answered.text
    tokens = answered.json()
    claims = claims_of(tokens["access_token"])
    assert claims["amr"] == ["pwd", "otp", "mfa"]
    assert claims["acr"] == "mfa"
    assert claims["auth_time"] == int(h.clock.now().timestamp())
    status = await h.client.get("/auth/session-status", headers=bearer(tokens["access_token"]))
    session = status.json()["session"]
    assert (session["amr"], session["acr"]) == (["pwd", "otp", "mfa"], "mfa")
    # A refresh keeps the session's context in its access token.
    refreshed = await h.refresh(tokens["refresh_token"])
    assert claims_of(refreshed.json()["access_token"])["amr"] == ["pwd", "otp", "mfa"]
    events = await events_of(h, enrolled.email)
    assert events[-3:] == ["login.mfa_required", "login.succeeded", "refresh.rotated"]


async def test_a_password_session_says_so(harness: Harness) -> None:
    h = harness
    tokens = await h.login(await h.create_user())
    claims = claims_of(tokens["access_token"])
    assert (claims["amr"], claims["acr"]) == (["pwd"], "pwd")
    status = await h.client.get("/auth/session-status", headers=bearer(tokens["access_token"]))
    assert status.json()["session"]["factor_at"] is None


@pytest.mark.parametrize(("steps", "accepted"), [(-2, False), (-1, True), (1, True), (2, False)])
async def test_the_code_window_is_one_step_either_side(
    harness: Harness, steps: int, accepted: bool
) -> None:
    h = harness
    enrolled = await enrol(h)
    h.clock.advance(90)  # three steps on: every code tried here is later than the spent one
    challenge = await first_step(h, enrolled.email)
    code = code_at(enrolled.secret, h.clock.now(), steps=steps)
    answered = await second_step(h, challenge, code=code)
    assert answered.status_code == (200 if accepted else 401), answered.text
    if not accepted:
        assert error_code(answered) == "invalid_mfa_code"


async def test_a_code_works_once(harness: Harness) -> None:
    h = harness
    enrolled = await enrol(h)
    h.clock.advance(30)
    code = code_at(enrolled.secret, h.clock.now())
    assert (await second_step(h, await first_step(h, enrolled.email), code=code)).status_code == 200
    again = await second_step(h, await first_step(h, enrolled.email), code=code)
    assert error_code(again) == "invalid_mfa_code"
    # Nor does an earlier step's code, once a later one was used.
    earlier = code_at(enrolled.secret, h.clock.now(), steps=-1)
    assert error_code(await second_step(h, await first_step(h, enrolled.email), code=earlier)) == (
        "invalid_mfa_code"
    )


async def test_recovery_codes_work_once_and_tell_the_owner(harness: Harness) -> None:
    h = harness
    enrolled = await enrol(h)
    code = enrolled.recovery_codes[3]
    typed = code.upper().replace("-", " ")  # as a person might type it
    answered = await second_step(h, await first_step(h, enrolled.email), recovery_code=typed)
    assert answered.status_code == 200, answered.text
    again = await second_step(h, await first_step(h, enrolled.email), recovery_code=code)
    assert error_code(again) == "invalid_mfa_code"
    status = await h.client.get("/auth/mfa", headers=bearer(answered.json()["access_token"]))
    assert status.json()["recovery_codes_left"] == 9
    assert "mfa.recovery_code_used" in await events_of(h, enrolled.email)
    notices = await mails_of(h, "recovery_code_used", enrolled.email)
    assert len(notices) == 1
    assert notices[0]["context"] == {"codes_left": "9"}


async def test_the_challenge_is_single_use_and_short_lived(harness: Harness) -> None:
    h = harness
    enrolled = await enrol(h)
    h.clock.advance(30)
    challenge = await first_step(h, enrolled.email)
    code = code_at(enrolled.secret, h.clock.now())
    assert (await second_step(h, challenge, code=code)).status_code == 200
    h.clock.advance(30)
    reused = await second_step(h, challenge, code=code_at(enrolled.secret, h.clock.now()))
    assert error_code(reused) == "mfa_challenge_invalid"
    late = await first_step(h, enrolled.email)
    h.clock.advance(301)  # MFA_CHALLENGE_TTL
    expired = await second_step(h, late, code=code_at(enrolled.secret, h.clock.now()))
    assert error_code(expired) == "mfa_challenge_invalid"
    assert error_code(await second_step(h, "made-up", code="123456")) == "mfa_challenge_invalid"


async def test_wrong_codes_end_the_challenge_and_lock_the_account(harness: Harness) -> None:
    h = harness
    enrolled = await enrol(h)
    h.clock.advance(30)
    challenge = await first_step(h, enrolled.email)
    wrong = code_at(enrolled.secret, h.clock.now(), steps=7)
    for _ in range(5):  # MFA_CHALLENGE_MAX_ATTEMPTS, and LOCKOUT_THRESHOLD
        assert error_code(await second_step(h, challenge, code=wrong)) == "invalid_mfa_code"
    right = code_at(enrolled.secret, h.clock.now())
    assert error_code(await second_step(h, challenge, code=right)) == "mfa_challenge_invalid"
    # The account is locked: the password no longer buys a challenge, and the failures were
    # not wiped by the password steps in between.
    refused = await h.client.post(
        "/auth/login", json={"email": enrolled.email, "password": PASSWORD}
    )
    assert refused.status_code == 401
    events = await events_of(h, enrolled.email)
    assert events.count("login.mfa_failed") == 6
    assert "account.locked" in events


async def test_a_password_change_between_the_steps_ends_the_challenge(harness: Harness) -> None:
    h = harness
    enrolled = await enrol(h)
    h.clock.advance(30)
    challenge = await first_step(h, enrolled.email)
    await h.set_password(enrolled.email, "another horse battery staple")
    answered = await second_step(h, challenge, code=code_at(enrolled.secret, h.clock.now()))
    assert error_code(answered) == "mfa_challenge_invalid"


async def test_the_password_grant_refuses_an_account_with_a_second_factor(
    harness: Harness,
) -> None:
    h = harness
    enrolled = await enrol(h)
    response = await h.client.post(
        "/auth/token",
        data={"grant_type": "password", "username": enrolled.email, "password": PASSWORD},
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert "mfa_required" in response.json()["error_description"]


async def test_exactly_one_factor_per_answer(harness: Harness) -> None:
    h = harness
    both = await h.client.post(
        "/auth/login/mfa",
        json={"challenge": "x", "code": "123456", "recovery_code": "abcd-efgh-ijkl"},
    )
    neither = await h.client.post("/auth/login/mfa", json={"challenge": "x"})
    assert both.status_code == neither.status_code == 422


async def test_turning_the_factor_off_needs_a_fresh_one(harness: Harness) -> None:
    h = harness
    enrolled = await enrol(h)
    headers = bearer(enrolled.tokens["access_token"])
    h.clock.advance(30)
    wrong = code_at(enrolled.secret, h.clock.now(), steps=9)
    refused = await h.client.post("/auth/mfa/disable", json={"code": wrong}, headers=headers)
    assert error_code(refused) == "invalid_mfa_code"
    right = code_at(enrolled.secret, h.clock.now())
    assert (
        await h.client.post("/auth/mfa/disable", json={"code": right}, headers=headers)
    ).status_code == 204
    assert "access_token" in await h.login(enrolled.email)  # one step again
    events = await events_of(h, enrolled.email)
    assert {"mfa.totp_enabled", "mfa.disabled"} <= set(events)
    assert len(await mails_of(h, "mfa_disabled", enrolled.email)) == 1


async def test_a_secret_the_key_cannot_open_is_a_409_and_an_operator_resets_it(
    harness: Harness,
) -> None:
    h = harness
    enrolled = await enrol(h)
    async with h.ctx.engine.begin() as conn:  # sealed under another SECRET_KEY
        await conn.execute(text("UPDATE totp_factors SET sealed_secret = 'gAAAAAB-not-ours'"))
    h.clock.advance(30)
    challenge = await first_step(h, enrolled.email)
    answered = await second_step(h, challenge, code=code_at(enrolled.secret, h.clock.now()))
    assert answered.status_code == 409
    assert error_code(answered) == "mfa_unavailable"
    done = await cli(h.ctx.settings.database_url, "users", "reset-mfa", enrolled.email)
    assert done.returncode == 0, done.stderr
    assert "removed" in done.stdout
    assert "access_token" in await h.login(enrolled.email)
    assert len(await mails_of(h, "mfa_disabled", enrolled.email)) == 1


async def test_new_recovery_codes_replace_the_old(harness: Harness) -> None:
    h = harness
    enrolled = await enrol(h)
    headers = bearer(enrolled.tokens["access_token"])
    fresh = await h.client.post(
        "/auth/mfa/recovery-codes",
        json={"recovery_code": enrolled.recovery_codes[0]},
        headers=headers,
    )
    assert fresh.status_code == 200, fresh.text
    new_codes = fresh.json()["recovery_codes"]
    old = await second_step(
        h, await first_step(h, enrolled.email), recovery_code=enrolled.recovery_codes[1]
    )
    assert error_code(old) == "invalid_mfa_code"
    new = await second_step(h, await first_step(h, enrolled.email), recovery_code=new_codes[0])
    assert new.status_code == 200
    assert "mfa.recovery_codes_regenerated" in await events_of(h, enrolled.email)


async def test_second_step_answers_are_rate_limited_per_account(postgres_url: str) -> None:
    settings = make_settings(
        postgres_url, rate_limits_enabled=True, rate_limit_login_mfa_account="3/minute"
    )
    async for h in start_harness(settings):
        enrolled = await enrol(h)
        challenge = await first_step(h, enrolled.email)
        wrong = code_at(enrolled.secret, h.clock.now(), steps=7)
        codes = [(await second_step(h, challenge, code=wrong)).status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]


async def test_wrong_codes_pause_the_factor_and_a_password_reset_does_not_lift_it(
    harness: Harness,
) -> None:
    """The factors' own lockout: MFA_LOCKOUT_THRESHOLD wrong codes in a row, over any number of
    challenges, and no code is checked for MFA_LOCKOUT_BASE_SECONDS; the owner is emailed once.
    A password reset (which clears the password lockout) leaves it in force."""
    h = harness
    enrolled = await enrol(h)
    h.clock.advance(30)
    wrong = code_at(enrolled.secret, h.clock.now(), steps=7)
    for _ in range(5):
        challenge = await first_step(h, enrolled.email)
        assert error_code(await second_step(h, challenge, code=wrong)) == "invalid_mfa_code"
        h.clock.advance(301)  # past the password lockout the same codes caused
    await h.set_password(enrolled.email, PASSWORD)  # an operator's reset
    challenge = await first_step(h, enrolled.email)
    right = code_at(enrolled.secret, h.clock.now())
    paused = await second_step(h, challenge, code=right)
    assert paused.status_code == 429
    assert error_code(paused) == "mfa_locked"
    assert 0 < int(paused.headers["retry-after"]) <= 900
    assert len(await mails_of(h, "mfa_codes_guessed", enrolled.email)) == 1
    assert "mfa.locked" in await events_of(h, enrolled.email)
    h.clock.advance(901)
    challenge = await first_step(h, enrolled.email)
    answered = await second_step(h, challenge, code=code_at(enrolled.secret, h.clock.now()))
    assert answered.status_code == 200, answered.text
    # A right code starts the count again: one more wrong code does not pause.
    h.clock.advance(30)
    again = await second_step(h, await first_step(h, enrolled.email), code=wrong)
    assert error_code(again) == "invalid_mfa_code"
