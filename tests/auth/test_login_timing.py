"""F37: unknown-user and wrong-password answers take the same time (dummy-hash verification)."""

from __future__ import annotations

from tests.conftest import Harness, make_settings, start_harness
from tests.support.timing import assert_same_time, interleaved


async def _failed_login(h: Harness, email: str) -> None:
    body = {"email": email, "password": "wrong password 1"}
    response = await h.client.post("/auth/login", json=body)
    assert response.status_code == 401


async def test_unknown_user_and_wrong_password_take_the_same_time(database_url: str) -> None:
    # The production costs: with the test profile's near-free argon2 there is nothing to time.
    settings = make_settings(database_url, password_hash_profile="owasp")
    async for h in start_harness(settings):
        unknown, wrong = await _timed_failures(h, await h.create_user())
    # Without the dummy hash the unknown-user path is ~100x faster (no argon2 at all); a wrong
    # password also writes the failure count.
    assert_same_time(wrong, unknown)
    assert min(unknown) > 0.005  # argon2 really ran


async def _timed_failures(h: Harness, email: str) -> list[list[float]]:
    async def unknown_user(i: int) -> None:
        await _failed_login(h, f"ghost-{i}@example.com")

    async def wrong_password(i: int) -> None:
        await _failed_login(h, email)

    return await interleaved(12, unknown_user, wrong_password)
