"""/auth/token counts each request against its grant's limits before it checks a DPoP proof,
as /auth/login and /auth/refresh do (from the security review of issue 18): a signature check
and a replay-cache write per request, without an account and without a limit, would be the
cheapest way to load the service; and a request for no grant at all checks no proof."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from app.core.db import table_of
from app.dpop.models import SeenProof
from tests.conftest import Harness, make_settings, start_harness
from tests.dpop.test_routes import Client

_seen = table_of(SeenProof)


@pytest.fixture
async def limited(database_url: str) -> AsyncIterator[Harness]:
    settings = make_settings(database_url, rate_limits_enabled=True, rate_limit_login_ip="2/minute")
    async for h in start_harness(settings):
        yield h


async def _seen_rows(h: Harness) -> int:
    async with h.ctx.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(_seen))).scalar_one())


async def test_the_token_endpoint_limits_before_it_checks_a_proof(limited: Harness) -> None:
    form = {"grant_type": "password", "username": "nobody@example.com", "password": "wrong"}
    for _ in range(2):
        assert (await limited.client.post("/auth/token", data=form)).status_code == 400
    assert (await limited.client.post("/auth/token", data=form)).status_code == 429
    # As /auth/login does: over the limit, the proof is not even looked at.
    with_proof = await limited.client.post(
        "/auth/token", data=form, headers={"DPoP": Client(limited).proof("POST", "/auth/token")}
    )
    assert with_proof.status_code == 429, with_proof.text
    bad_proof = await limited.client.post("/auth/token", data=form, headers={"DPoP": "x.y.z"})
    assert bad_proof.status_code == 429, bad_proof.text


@pytest.mark.parametrize("grant", [{}, {"grant_type": "nonsense"}])
async def test_a_request_that_obtains_nothing_writes_no_replay_cache_row(
    harness: Harness, grant: dict[str, str]
) -> None:
    client = Client(harness)
    before = await _seen_rows(harness)
    for _ in range(5):
        response = await harness.client.post(
            "/auth/token", data=grant, headers={"DPoP": client.proof("POST", "/auth/token")}
        )
        assert response.status_code == 400, response.text
    assert await _seen_rows(harness) == before
