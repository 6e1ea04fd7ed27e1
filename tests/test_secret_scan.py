"""The run-wide check that no log line carries a secret (conftest) finds every issued token."""

from __future__ import annotations

import secrets

from tests.conftest import PASSWORD, _literal_finder


def test_literal_finder_agrees_with_a_substring_search() -> None:
    refresh = f"{secrets.token_urlsafe(16)}.{secrets.token_urlsafe(32)}"
    jwt_like = "eyJ" + secrets.token_urlsafe(60) + "." + secrets.token_urlsafe(80)
    cookie = secrets.token_urlsafe(32)
    literals = {PASSWORD, refresh, jwt_like, cookie, "short.tok", "spaced secret value here"}
    lines = [
        f'{{"path": "/auth/refresh?refresh_token={refresh}"}}',
        f"Bearer {jwt_like}",
        f"x{cookie}x",  # inside a longer run of token characters
        f"-{cookie[:-1]}-",  # a truncated token is not the token
        f"password={PASSWORD}!",
        "short.token",
        "a spaced secret value here b",
        '{"msg": "request", "request_id": "0123456789abcdef0123456789abcdef"}',
    ]
    contains = _literal_finder(literals)
    found = [line for line in lines if contains(line)]
    assert found == [line for line in lines if any(x in line for x in literals)]
    assert found == lines[:3] + lines[4:7]
