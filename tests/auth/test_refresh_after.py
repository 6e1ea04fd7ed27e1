"""refresh_after never falls after the session's idle deadline (issue 16, docs drift)."""

from __future__ import annotations

from datetime import datetime

from app.core.settings import Settings
from tests.conftest import bearer, make_settings, start_harness


def _settings(database_url: str) -> Settings:
    # A token that outlives the idle timeout: its four fifths (login + 23 s) fell 13 s after
    # the idle deadline (login + 10 s), so a client waiting for it found its session expired.
    return make_settings(
        database_url, access_token_ttl=29, session_idle_timeout=10, session_touch_interval=1
    )


async def test_login_and_refresh_say_refresh_before_the_idle_deadline(database_url: str) -> None:
    async for h in start_harness(_settings(database_url)):
        tokens = await h.login(await h.create_user())
        for body in (tokens, (await h.refresh(tokens["refresh_token"])).json()):
            refresh_after = datetime.fromisoformat(body["refresh_after"])
            idle_deadline = datetime.fromisoformat(body["session"]["idle_expires_at"])
            assert refresh_after < idle_deadline, body
            # Four fifths of the way to the idle deadline, as for a token's expiry.
            assert (idle_deadline - refresh_after).total_seconds() == 2


async def test_session_status_says_refresh_before_the_idle_deadline(database_url: str) -> None:
    async for h in start_harness(_settings(database_url)):
        tokens = await h.login(await h.create_user())
        h.clock.advance(3)
        response = await h.client.get(
            "/auth/session-status", headers=bearer(tokens["access_token"])
        )
        assert response.status_code == 200, response.text
        body = response.json()
        refresh_after = datetime.fromisoformat(body["refresh_after"])
        idle_deadline = datetime.fromisoformat(body["session"]["idle_expires_at"])
        assert refresh_after < idle_deadline, body
