"""BACKCHANNEL_LOGOUT_CLIENTS is validated as the settings class validates everything (https
in production, one entry per client_id), and discovery says back-channel logout is there."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from app.core.settings import Environment, Settings
from tests.conftest import Harness, make_settings

PRODUCTION: dict[str, Any] = {
    "environment": Environment.production,
    "secret_key": "Zq8v4X2mR7pL1tW9yB3nK6dF0hJ5sC8aE2gU4iO7rT1xV3bN9mQ6wY0zL5kP2jH",
    "jwt_issuer": "https://auth.example.com",
}


def _clients(*entries: tuple[str, str]) -> str:
    return json.dumps([{"client_id": c, "uri": u} for c, u in entries])


def test_production_requires_https_receivers() -> None:
    with pytest.raises(ValidationError, match="must be an https:// URL in production"):
        Settings(
            _env_file=None,
            **PRODUCTION,
            backchannel_logout_clients=_clients(("notes", "http://notes.internal/bcl")),
        )
    ok = Settings(
        _env_file=None,
        **PRODUCTION,
        backchannel_logout_clients=_clients(("notes", "https://notes.internal/bcl")),
    )
    assert ok.backchannel_logout_clients[0].uri == "https://notes.internal/bcl"


def test_development_and_test_allow_http() -> None:
    settings = make_settings(
        "sqlite+aiosqlite:///:memory:",
        backchannel_logout_clients=_clients(("notes", "http://127.0.0.1:9000/bcl")),
    )
    assert [c.client_id for c in settings.backchannel_logout_clients] == ["notes"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (_clients(("a", "https://x/1"), ("a", "https://x/2")), "each client_id once"),
        (_clients(("a", "ftp://x/1")), "absolute http"),
        (_clients(("a", "/relative")), "absolute http"),
        (_clients(("a", "https://x/1#frag")), "without a fragment"),
        ('[{"client_id": "a"}]', "uri"),
        ('[{"client_id": "a", "uri": "https://x", "secret": "s"}]', "Extra inputs"),
    ],
)
def test_malformed_clients_are_refused(value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_settings("sqlite+aiosqlite:///:memory:", backchannel_logout_clients=value)


@pytest.mark.parametrize(
    "path", ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"]
)
async def test_discovery_advertises_back_channel_logout(harness: Harness, path: str) -> None:
    metadata = (await harness.client.get(path)).json()
    assert metadata["backchannel_logout_supported"] is True
    assert metadata["backchannel_logout_session_supported"] is True
