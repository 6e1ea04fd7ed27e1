"""Email verification (issue 21), against a real SMTP server: with REQUIRE_VERIFIED_EMAIL an
unproven account's login (one registered while verification was not required) is refused
with a distinct code and sends a link; following it verifies the address. Operators'
accounts count as verified; `users verify` vouches. (Registration's own links, which make the
account: tests/recovery/test_registration.py.)"""

from __future__ import annotations

import asyncio
import re

import httpx

from tests.conftest import PASSWORD, Harness, bearer, error_code, start_harness
from tests.mail.conftest import SmtpServer, mail_settings, mailed
from tests.support.cli import cli


async def _unproven(h: Harness, email: str) -> None:
    """An account whose address was never proven."""
    await h.create_user(email, verified=False)


async def _login(h: Harness, email: str, password: str = PASSWORD) -> httpx.Response:
    return await h.client.post("/auth/login", json={"email": email, "password": password})


async def _link_token(smtp: SmtpServer, email: str, count: int = 1) -> str:
    return await mailed(
        smtp,
        email,
        subject="Verify your authsvc email address",
        pattern=r"Your verification token: (\S+)",
        count=count,
    )


async def _confirm(h: Harness, token: str) -> httpx.Response:
    return await h.client.post("/auth/verify-email/confirm", json={"token": token})


async def test_a_registered_account_logs_in_once_its_address_is_proven(
    strict: Harness, smtp: SmtpServer
) -> None:
    email = f"new-{re.sub('[^a-z0-9]', '', str(id(strict)))}@example.com"
    await _unproven(strict, email)
    refused = await _login(strict, email)
    assert (refused.status_code, error_code(refused)) == (403, "email_not_verified")
    token = await _link_token(smtp, email)  # the refusal's fresh link
    assert (await _confirm(strict, token)).status_code == 204
    assert (await _login(strict, email)).status_code == 200
    again = await _confirm(strict, token)
    assert (again.status_code, error_code(again)) == (400, "verification_token_invalid")


async def test_a_wrong_password_says_nothing_about_verification_and_sends_nothing(
    strict: Harness, smtp: SmtpServer
) -> None:
    email = "unproven-wrong@example.com"
    await _unproven(strict, email)
    refused = await _login(strict, email, "not the password at all")
    assert (refused.status_code, error_code(refused)) == (401, "invalid_credentials")
    # Had the wrong password sent a link, the right one's would be the second message.
    right = await _login(strict, email)
    assert error_code(right) == "email_not_verified"
    await _link_token(smtp, email)
    await asyncio.sleep(0.2)
    assert len(smtp.mailbox.to(email)) == 1  # the right password's only


async def test_operator_accounts_count_as_verified(strict: Harness) -> None:
    email = await strict.create_user()
    assert (await _login(strict, email)).status_code == 200


async def test_the_operator_vouches_with_users_verify(
    strict: Harness, smtp: SmtpServer, database_url: str
) -> None:
    email = "vouched@example.com"
    await _unproven(strict, email)
    assert (await _login(strict, email)).status_code == 403
    verified = await cli(database_url, "users", "verify", email)
    assert verified.returncode == 0, verified.stderr
    assert f"{email} is verified" in verified.stdout
    assert (await _login(strict, email)).status_code == 200
    again = await cli(database_url, "users", "verify", email)
    assert "was verified already" in again.stdout


async def test_a_signed_in_user_asks_for_a_link(database_url: str, smtp: SmtpServer) -> None:
    """Without REQUIRE_VERIFIED_EMAIL an unproven account logs in and may prove its address."""
    settings = mail_settings(database_url, smtp, allow_registration=True)
    async for h in start_harness(settings):
        email = "asks-for-a-link@example.com"
        registered = await h.client.post(
            "/auth/register", json={"email": email, "password": PASSWORD}
        )
        assert registered.status_code == 201, registered.text
        await _link_token(smtp, email)  # registration's own
        access = (await h.login(email))["access_token"]
        sent = await h.client.post("/auth/verify-email/request", headers=bearer(access))
        assert sent.status_code == 202, sent.text
        token = await _link_token(smtp, email, count=2)
        assert (await _confirm(h, token)).status_code == 204
        again = await h.client.post("/auth/verify-email/request", headers=bearer(access))
        assert (again.status_code, error_code(again)) == (409, "email_already_verified")


async def test_a_newer_link_voids_the_older_one(strict: Harness, smtp: SmtpServer) -> None:
    email = "two-links@example.com"
    await _unproven(strict, email)
    await _login(strict, email)
    first = await _link_token(smtp, email)
    await _login(strict, email)
    second = await _link_token(smtp, email, count=2)
    assert (await _confirm(strict, first)).status_code == 400
    assert (await _confirm(strict, second)).status_code == 204


async def test_a_verification_token_is_no_reset_token(strict: Harness, smtp: SmtpServer) -> None:
    email = "purpose@example.com"
    await _unproven(strict, email)
    await _login(strict, email)
    token = await _link_token(smtp, email)
    as_reset = await strict.client.post(
        "/auth/password-reset/confirm", json={"token": token, "new_password": "another one 123"}
    )
    assert (as_reset.status_code, error_code(as_reset)) == (400, "reset_token_invalid")
    assert (await _confirm(strict, token)).status_code == 204
