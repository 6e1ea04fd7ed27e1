"""Without REQUIRE_VERIFIED_EMAIL, `409 email_taken` tells an open registration's caller that an
address has an account: the trade-off kept where an account may sign in at once (docs/abuse.md;
with it, every address gets 202: tests/recovery/test_registration.py). What bounds it:
registration is off by default, and each attempt, taken address or not, counts toward the
per-IP login limit (RATE_LIMIT_LOGIN_IP) that logins from that IP share."""

from __future__ import annotations

import uuid

from tests.conftest import PASSWORD, Harness, error_code, make_settings, start_harness

PROXY = "203.0.113.7"  # the test transport's peer, trusted as a proxy below


async def _probe(h: Harness, email: str, headers: dict[str, str]) -> int:
    body = {"email": email, "password": PASSWORD}
    return (await h.client.post("/auth/register", json=body, headers=headers)).status_code


async def test_registration_probes_are_limited_per_ip(database_url: str) -> None:
    # An hour window: a minute's sliding window lets one more through just after a boundary.
    settings = make_settings(
        database_url,
        allow_registration=True,
        rate_limits_enabled=True,
        rate_limit_login_ip="4/hour",
        trusted_proxies=[PROXY],
    )
    async for h in start_harness(settings):
        known = await h.create_user()
        attacker = {"X-Forwarded-For": "198.51.100.20"}

        fresh = [f"probe-{uuid.uuid4().hex[:8]}@example.com" for _ in range(3)]
        answers = [await _probe(h, email, attacker) for email in (known, *fresh)]
        assert answers == [409, 201, 201, 201]
        # The budget is spent: the next probe learns nothing, whether the address is taken.
        for email in (known, f"probe-{uuid.uuid4().hex[:8]}@example.com"):
            limited = await h.client.post(
                "/auth/register", json={"email": email, "password": PASSWORD}, headers=attacker
            )
            assert limited.status_code == 429
            assert error_code(limited) == "rate_limited"
            assert int(limited.headers["retry-after"]) > 0
        # Logins from that IP share the budget; another IP has its own.
        login = await h.client.post(
            "/auth/login", json={"email": known, "password": PASSWORD}, headers=attacker
        )
        assert error_code(login) == "rate_limited"
        assert await _probe(h, known, {"X-Forwarded-For": "198.51.100.21"}) == 409


async def test_registration_is_closed_by_default(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url)):
        assert h.ctx.settings.allow_registration is False
        known = await h.create_user()
        closed = await h.client.post("/auth/register", json={"email": known, "password": PASSWORD})
        assert closed.status_code == 403
        assert error_code(closed) == "registration_closed"  # the same for any address
