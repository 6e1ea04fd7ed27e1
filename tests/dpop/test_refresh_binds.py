"""A refresh with a proof binds a session that was not bound (RFC 9449 §5; from the security
review of issue 18): a session that existed before its client turned DPoP on, or before
DPOP_REQUIRED, is bound from its first refresh with a proof, on both stores, so its successor
refresh tokens are worth nothing without the key."""

from __future__ import annotations

from tests.conftest import Harness, error_code, make_settings, start_harness
from tests.dpop.test_routes import Client


async def _rotate_with(client: Client, refresh_token: str) -> str:
    response = await client.refresh(refresh_token)
    assert response.status_code == 200, response.text[:200]
    token: str = response.json()["refresh_token"]
    return token


async def test_the_first_refresh_with_a_proof_binds_the_session(harness: Harness) -> None:
    tokens = await harness.login(await harness.create_user())  # before DPoP was turned on
    owner = Client(harness)
    successor = await _rotate_with(owner, tokens["refresh_token"])
    thief = await Client(harness).refresh(successor)
    assert thief.status_code == 400, thief.text[:200]
    assert error_code(thief) == "invalid_dpop_proof"
    await _rotate_with(owner, successor)  # and the owner goes on


async def test_under_dpop_required_an_old_session_is_bound_at_its_next_refresh(
    database_url: str,
) -> None:
    async for before in start_harness(make_settings(database_url)):
        tokens = await before.login(await before.create_user())
    async for h in start_harness(make_settings(database_url, dpop_required=True)):
        successor = await _rotate_with(Client(h), tokens["refresh_token"])
        thief = await Client(h).refresh(successor)
        assert thief.status_code == 400, thief.text[:200]
