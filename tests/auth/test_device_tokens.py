"""Issue 15 item 2: nobody who merely knows an email address can keep its owner locked out.

A client that has logged in before holds a device token (OWASP device cookies); the account's
lock does not apply to it. Untrusted clients meet the lock, which ends at most
LOCKOUT_MAX_SECONDS after the last wrong password (the bound docs/abuse.md gives)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from app.auth.transport import DEVICE_COOKIE
from app.users import repository as user_repo
from tests.auth.test_cookie_mode import COOKIE, set_cookies
from tests.conftest import PASSWORD, Harness, error_code, make_settings, start_harness

PROXY = "203.0.113.7"  # the test transport's peer, trusted as a proxy so X-Forwarded-For counts
ISSUE_LOCKOUT = {"lockout_threshold": 10, "lockout_base_seconds": 30, "lockout_max_seconds": 300}


async def _login(h: Harness, email: str, password: str = PASSWORD, **extra: Any) -> httpx.Response:
    ip = extra.pop("ip", "198.51.100.1")
    return await h.client.post(
        "/auth/login",
        json={"email": email, "password": password, **extra},
        headers={"X-Forwarded-For": ip},
    )


async def _device_token(h: Harness, email: str) -> str:
    first = await _login(h, email)
    assert first.status_code == 200
    token: str = first.json()["device_token"]
    return token


async def _failed_logins(h: Harness, email: str) -> tuple[int, bool]:
    async with h.ctx.engine.connect() as conn:
        user = await user_repo.get_by_email(conn, email)
    assert user is not None
    return user.failed_logins, user.is_locked_at(h.clock.now())


@pytest.mark.parametrize("attacker_ips", [1, 20])
async def test_the_owner_gets_in_while_an_attacker_hammers_the_account(
    database_url: str, attacker_ips: int
) -> None:
    settings = make_settings(database_url, trusted_proxies=[PROXY], **ISSUE_LOCKOUT)
    async for h in start_harness(settings):
        email = await h.create_user()
        device = await _device_token(h, email)
        new_client_refused = 0
        # Five minutes of 10 wrong passwords a minute, spread over `attacker_ips` addresses.
        for attempt in range(50):
            ip = f"192.0.2.{attempt % attacker_ips + 10}"
            wrong = await _login(h, email, "a wrong guess!", ip=ip)
            assert error_code(wrong) == "invalid_credentials"
            if attempt >= 9:
                # A client the account has never seen meets the lock the attacker keeps in
                # force (from the 10th wrong password on; before it, its success would reset
                # the count).
                new_client = await _login(h, email, ip="198.51.100.77")
                new_client_refused += new_client.status_code == 401
            h.clock.advance(6)
            if attempt % 5 == 4:
                # The owner's known device gets in at once, every time.
                owner = await _login(h, email, device_token=device)
                assert owner.status_code == 200, owner.text
                device = owner.json()["device_token"]
        assert new_client_refused == 41
        failures, locked = await _failed_logins(h, email)
        assert failures >= 10
        assert locked  # the owner's logins did not lift the lock
        # The documented bound: a new client gets in LOCKOUT_MAX_SECONDS after the attack.
        h.clock.advance(settings.lockout_max_seconds)
        assert (await _login(h, email, ip="198.51.100.77")).status_code == 200


async def test_a_trusted_devices_wrong_passwords_are_its_own(database_url: str) -> None:
    settings = make_settings(
        database_url,
        rate_limits_enabled=True,
        rate_limit_login_ip="100/minute",
        rate_limit_login_account="100/minute",
        rate_limit_login_device_failures="2/hour",
        lockout_threshold=3,
    )
    async for h in start_harness(settings):
        email = await h.create_user()
        device = await _device_token(h, email)
        for _ in range(2):
            typo = await _login(h, email, "a wrong guess!", device_token=device)
            assert error_code(typo) == "invalid_credentials"
        assert await _failed_logins(h, email) == (0, False)  # not the account's failures
        # Its budget spent, the device is untrusted: its failures now count for the account.
        await _login(h, email, "a wrong guess!", device_token=device)
        assert await _failed_logins(h, email) == (1, False)


async def test_flooding_the_accounts_rate_limit_does_not_shut_out_its_devices(
    database_url: str,
) -> None:
    settings = make_settings(
        database_url,
        rate_limits_enabled=True,
        rate_limit_login_ip="100/minute",
        rate_limit_login_account="3/minute",
    )
    async for h in start_harness(settings):
        email = await h.create_user()
        device = await _device_token(h, email)
        flood = [await _login(h, email, "a wrong guess!") for _ in range(4)]
        assert error_code(flood[-1]) == "rate_limited"
        assert (await _login(h, email, device_token=device)).status_code == 200
        assert error_code(await _login(h, email)) == "rate_limited"


async def test_a_device_token_is_bound_to_its_account_and_password(database_url: str) -> None:
    settings = make_settings(database_url, lockout_threshold=1)
    async for h in start_harness(settings):
        owner, other = await h.create_user(), await h.create_user()
        device = await _device_token(h, owner)
        other_device = await _device_token(h, other)
        await _login(h, owner, "a wrong guess!")
        # Another account's device token, and garbage, are no trust at all...
        for token in (other_device, "not.a.token", device[:-2], "x" * 1000):
            refused = await _login(h, owner, device_token=token)
            assert error_code(refused) == "invalid_credentials", token
        assert (await _login(h, owner, device_token=device)).status_code == 200
        # ...and a password change ends the trust of every device.
        await h.set_password(owner, "a changed password")
        await _login(h, owner, "a wrong guess!")
        stale = await _login(h, owner, "a changed password", device_token=device)
        assert error_code(stale) == "invalid_credentials"


async def test_a_device_token_expires(database_url: str) -> None:
    settings = make_settings(database_url, lockout_threshold=1, device_token_ttl=3600)
    async for h in start_harness(settings):
        email = await h.create_user()
        device = await _device_token(h, email)
        h.clock.advance(3600)
        await _login(h, email, "a wrong guess!")
        assert error_code(await _login(h, email, device_token=device)) == "invalid_credentials"


async def test_browsers_keep_the_device_token_in_a_host_cookie(database_url: str) -> None:
    settings = make_settings(database_url, lockout_threshold=1)
    async for h in start_harness(settings):
        email = await h.create_user()
        login = await h.client.post(
            "/auth/login", json={"email": email, "password": PASSWORD}, headers=COOKIE
        )
        assert login.json()["device_token"] is None  # never readable by the page's script
        (cookie,) = [c for c in set_cookies(login) if c["name"] == DEVICE_COOKIE]
        attrs = cookie["attrs"]
        assert attrs["path"] == "/"
        assert "domain" not in attrs
        assert attrs["secure"] is True
        assert attrs["httponly"] is True
        assert attrs["samesite"] == "strict"
        assert int(attrs["max-age"]) == settings.device_token_ttl
        await _login(h, email, "a wrong guess!")
        again = await h.client.post(
            "/auth/login",
            json={"email": email, "password": PASSWORD},
            headers={**COOKIE, "cookie": f"{DEVICE_COOKIE}={cookie['value']}"},
        )
        assert again.status_code == 200, again.text


async def test_a_shorter_ttl_applies_to_device_tokens_issued_before(database_url: str) -> None:
    settings = make_settings(database_url, lockout_threshold=1)
    async for h in start_harness(settings):
        email = await h.create_user()
        device = await _device_token(h, email)
    shorter = make_settings(database_url, lockout_threshold=1, device_token_ttl=3600)
    async for h in start_harness(shorter):
        h.clock.advance(3601)
        await _login(h, email, "a wrong guess!")
        assert error_code(await _login(h, email, device_token=device)) == "invalid_credentials"
