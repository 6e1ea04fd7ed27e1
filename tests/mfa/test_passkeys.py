"""Passkeys (WebAuthn) through the real app on both databases, answered by a software
authenticator (tests/support/authenticator.py): registration (with the password), passwordless
login, a login's second step, step-up, rename and delete, and what must be refused: a cloned
authenticator (its counter lags), no user verification, another origin, a replayed ceremony."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from tests.conftest import PASSWORD, Harness, bearer, error_code, make_settings, start_harness
from tests.mfa.conftest import claims_of, events_of, first_step, mails_of, second_step
from tests.support.authenticator import SoftAuthenticator, b64url
from tests.support.cli import cli

ORIGIN = "https://auth.test"  # the test settings' JWT_ISSUER: the default WebAuthn origin


async def _registered(h: Harness, **options: Any) -> tuple[str, dict[str, Any], SoftAuthenticator]:
    """A new account with a passkey: (email, the registering session's tokens, the passkey)."""
    email = await h.create_user()
    tokens = await h.login(email)
    headers = bearer(tokens["access_token"])
    began = await h.client.post(
        "/auth/passkeys/register/options",
        json={"password": PASSWORD, "name": "laptop"},
        headers=headers,
    )
    assert began.status_code == 200, began.text
    authenticator = SoftAuthenticator(ORIGIN, **options)
    credential = authenticator.create(began.json()["options"])
    done = await h.client.post(
        "/auth/passkeys",
        json={"ceremony": began.json()["ceremony"], "credential": credential},
        headers=headers,
    )
    assert done.status_code == 201, done.text
    return email, tokens, authenticator


async def _passwordless(h: Harness, authenticator: SoftAuthenticator) -> Any:
    options = (await h.client.post("/auth/passkeys/login/options")).json()
    answer = authenticator.get(options["options"])
    return await h.client.post(
        "/auth/passkeys/login", json={"ceremony": options["ceremony"], "credential": answer}
    )


async def test_registration_needs_the_password_and_tells_the_owner(harness: Harness) -> None:
    h = harness
    email = await h.create_user()
    tokens = await h.login(email)
    wrong = await h.client.post(
        "/auth/passkeys/register/options",
        json={"password": "not the password"},
        headers=bearer(tokens["access_token"]),
    )
    assert error_code(wrong) == "invalid_current_password"
    email, tokens, _ = await _registered(h)
    listed = await h.client.get("/auth/passkeys", headers=bearer(tokens["access_token"]))
    assert [p["name"] for p in listed.json()] == ["laptop"]
    status = await h.client.get("/auth/mfa", headers=bearer(tokens["access_token"]))
    assert status.json()["passkeys"] == 1
    assert len(await mails_of(h, "passkey_added", email)) == 1
    assert "passkey.registered" in await events_of(h, email)


async def test_passwordless_login(harness: Harness) -> None:
    h = harness
    email, _, authenticator = await _registered(h)
    answered = await _passwordless(h, authenticator)
    assert answered.status_code == 200, answered.text
    claims = claims_of(answered.json()["access_token"])
    assert (claims["amr"], claims["acr"]) == (["hwk", "user", "mfa"], "mfa")
    me = await h.client.get("/auth/me", headers=bearer(answered.json()["access_token"]))
    assert me.json()["email"] == email


async def test_a_synced_passkey_is_a_software_key(harness: Harness) -> None:
    h = harness
    _, _, authenticator = await _registered(h, backed_up=True)
    answered = await _passwordless(h, authenticator)
    assert claims_of(answered.json()["access_token"])["amr"] == ["swk", "user", "mfa"]


async def test_a_cloned_authenticator_is_refused_and_audited(harness: Harness) -> None:
    h = harness
    email, _, authenticator = await _registered(h)
    clone = authenticator.clone()
    assert (await _passwordless(h, authenticator)).status_code == 200  # the owner: count 1
    assert (await _passwordless(h, authenticator)).status_code == 200  # count 2
    refused = await _passwordless(h, clone)  # count 1 again: it went backwards
    assert refused.status_code == 401
    assert error_code(refused) == "invalid_credentials"
    assert "passkey.clone_suspected" in await events_of(h, email)


async def test_a_passwordless_login_needs_user_verification(harness: Harness) -> None:
    h = harness
    _, _, authenticator = await _registered(h)
    authenticator.user_verifies = False  # presence only: possession is one factor
    assert (await _passwordless(h, authenticator)).status_code == 401


async def test_another_origin_is_refused(harness: Harness) -> None:
    h = harness
    _, _, authenticator = await _registered(h)
    authenticator.origin = "https://phishing.example"
    assert (await _passwordless(h, authenticator)).status_code == 401


async def test_a_ceremony_is_single_use(harness: Harness) -> None:
    h = harness
    _, _, authenticator = await _registered(h)
    options = (await h.client.post("/auth/passkeys/login/options")).json()
    body = {"ceremony": options["ceremony"], "credential": authenticator.get(options["options"])}
    assert (await h.client.post("/auth/passkeys/login", json=body)).status_code == 200
    replayed = await h.client.post("/auth/passkeys/login", json=body)
    assert replayed.status_code == 400
    assert error_code(replayed) == "passkey_ceremony_invalid"


async def test_a_passkey_answers_a_logins_second_step(harness: Harness) -> None:
    h = harness
    email, _, authenticator = await _registered(h)
    response = await h.client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 202
    assert response.json()["methods"] == ["passkey"]
    challenge = await first_step(h, email)
    options = await h.client.post("/auth/login/mfa/passkey-options", json={"challenge": challenge})
    assert options.status_code == 200, options.text
    allowed = options.json()["options"]["allowCredentials"]
    assert [a["id"] for a in allowed] == [b64url(authenticator.credential_id)]
    answer = authenticator.get(options.json()["options"])
    passkey = {"ceremony": options.json()["ceremony"], "credential": answer}
    answered = await second_step(h, challenge, passkey=passkey)
    assert answered.status_code == 200, answered.text
    assert claims_of(answered.json()["access_token"])["amr"] == ["pwd", "hwk", "mfa"]


async def test_step_up_rename_and_delete(harness: Harness) -> None:
    h = harness
    email, tokens, authenticator = await _registered(h)
    headers = bearer(tokens["access_token"])  # a password session: no recent factor
    listed = (await h.client.get("/auth/passkeys", headers=headers)).json()
    passkey_id = listed[0]["id"]
    refused = await h.client.delete(f"/auth/passkeys/{passkey_id}", headers=headers)
    assert error_code(refused) == "insufficient_authentication"
    renamed = await h.client.patch(
        f"/auth/passkeys/{passkey_id}", json={"name": "work laptop"}, headers=headers
    )
    assert renamed.status_code == 204
    options = (await h.client.post("/auth/step-up/passkey-options", headers=headers)).json()
    answer = authenticator.get(options["options"])
    stepped = await h.client.post(
        "/auth/step-up",
        json={"passkey": {"ceremony": options["ceremony"], "credential": answer}},
        headers=headers,
    )
    assert stepped.status_code == 200, stepped.text
    assert stepped.json()["acr"] == "mfa"
    deleted = await h.client.delete(f"/auth/passkeys/{passkey_id}", headers=headers)
    assert deleted.status_code == 204
    assert "access_token" in await h.login(email)  # no factor left: one step again
    missing = await h.client.delete(f"/auth/passkeys/{passkey_id}", headers=headers)
    assert error_code(missing) == "passkey_not_found"
    assert {"passkey.deleted", "mfa.step_up"} <= set(await events_of(h, email))


async def test_an_operator_reset_removes_passkeys(harness: Harness) -> None:
    h = harness
    email, _, authenticator = await _registered(h)
    done = await cli(h.ctx.settings.database_url, "users", "reset-mfa", email)
    assert done.returncode == 0, done.stderr
    assert (await _passwordless(h, authenticator)).status_code == 401
    async with h.ctx.engine.connect() as conn:
        left = await conn.scalar(
            text(
                "SELECT count(*) FROM passkey_credentials p JOIN users u ON u.id = p.user_id"
                " WHERE u.email = :email"
            ),
            {"email": email},
        )
    assert left == 0


async def test_malformed_answers_are_refused_never_a_500(harness: Harness) -> None:
    h = harness
    _, _, authenticator = await _registered(h)
    # A session that just proved the passkey: it may add another (a step-up's worth).
    headers = bearer((await _passwordless(h, authenticator)).json()["access_token"])
    good = authenticator.get(
        (await h.client.post("/auth/passkeys/login/options")).json()["options"]
    )
    shapes: list[Any] = [
        {},
        {"rawId": 12},
        {"rawId": "%%%"},
        {"rawId": good["rawId"]},
        {**good, "response": {}},
        {**good, "response": {**good["response"], "authenticatorData": "AAAA"}},
        {**good, "response": {**good["response"], "clientDataJSON": "bm90IGpzb24"}},
        {**good, "response": {**good["response"], "signature": ""}},
        {**good, "type": "other"},
        {"rawId": "A" * 2000},
    ]
    for shape in shapes:
        options = (await h.client.post("/auth/passkeys/login/options")).json()
        login = await h.client.post(
            "/auth/passkeys/login", json={"ceremony": options["ceremony"], "credential": shape}
        )
        assert login.status_code == 401, (shape, login.text)
        began = await h.client.post(
            "/auth/passkeys/register/options", json={"password": PASSWORD}, headers=headers
        )
        registered = await h.client.post(
            "/auth/passkeys",
            json={"ceremony": began.json()["ceremony"], "credential": shape},
            headers=headers,
        )
        assert registered.status_code == 400, (shape, registered.text)
        assert error_code(registered) == "invalid_mfa_code"


async def test_a_second_factor_is_added_only_after_a_recent_one(harness: Harness) -> None:
    """The password and a session (perhaps a thief's) do not add a passkey to an account that
    has a factor: a step-up first."""
    h = harness
    email, tokens, authenticator = await _registered(h)
    headers = bearer(tokens["access_token"])  # a password session, before the passkey
    refused = await h.client.post(
        "/auth/passkeys/register/options", json={"password": PASSWORD}, headers=headers
    )
    assert error_code(refused) == "insufficient_authentication"
    app = await h.client.post("/auth/mfa/totp", json={"password": PASSWORD}, headers=headers)
    assert error_code(app) == "insufficient_authentication"
    fresh = await _passwordless(h, authenticator)  # a session that just proved the passkey
    again = await h.client.post(
        "/auth/passkeys/register/options",
        json={"password": PASSWORD},
        headers=bearer(fresh.json()["access_token"]),
    )
    assert again.status_code == 200, again.text


async def test_app_only_routes_refuse_a_passkey_only_account(harness: Harness) -> None:
    h = harness
    _, _, authenticator = await _registered(h)
    tokens = (await _passwordless(h, authenticator)).json()
    headers = bearer(tokens["access_token"])
    options = (await h.client.post("/auth/step-up/passkey-options", headers=headers)).json()
    proof = {"ceremony": options["ceremony"], "credential": authenticator.get(options["options"])}
    codes = await h.client.post(
        "/auth/mfa/recovery-codes", json={"passkey": proof}, headers=headers
    )
    assert codes.status_code == 409  # codes that would never be accepted: none
    assert error_code(codes) == "mfa_not_enabled"
    off = await h.client.post("/auth/mfa/disable", json={"passkey": proof}, headers=headers)
    assert error_code(off) == "mfa_not_enabled"


async def test_a_forged_answer_is_no_clone_and_a_foreign_handle_is_refused(
    harness: Harness,
) -> None:
    h = harness
    email, _, authenticator = await _registered(h)
    forger = SoftAuthenticator(ORIGIN, credential_id=authenticator.credential_id)  # another key
    forger.user_handle = authenticator.user_handle
    assert (await _passwordless(h, forger)).status_code == 401
    assert "passkey.clone_suspected" not in await events_of(h, email)
    authenticator.user_handle = b"someone else"
    assert (await _passwordless(h, authenticator)).status_code == 401


async def test_a_passkey_login_meets_require_verified_email(database_url: str) -> None:
    settings = make_settings(database_url, require_verified_email=True)
    async for h in start_harness(settings):
        email, _, authenticator = await _registered(h)
        async with h.ctx.engine.begin() as conn:  # the address unproven again (say, changed)
            await conn.execute(
                text("UPDATE users SET email_verified_at = NULL WHERE email = :email"),
                {"email": email},
            )
        refused = await _passwordless(h, authenticator)
        assert refused.status_code == 403
        assert error_code(refused) == "email_not_verified"
