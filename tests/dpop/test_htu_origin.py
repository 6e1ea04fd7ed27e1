"""The URL a proof's htu is compared with (app/dpop/dependencies.py), from the security review
of issue 18.

1. Under a deployment prefix (root_path), scope["path"] already holds the prefix (see
   app.core.middleware.route_path); request_url adds root_path again, so the URL the client
   addressed never matches: every DPoP login/refresh/bound request is refused there, while a
   proof for ".../api/api/auth/login" would pass.
2. The authority comes from the request's Host header, which the client chooses (the shipped
   nginx passes $http_host, to our routes and in X-Original-URL): a proof minted for another
   origin with the same path (another resource server, a staging deployment) is accepted here.
   RFC 9449 §4.3 check 9: htu must be the URI of *this* request as the server knows it."""

from __future__ import annotations

import pytest

from tests.conftest import PASSWORD, make_settings, start_harness
from tests.dpop.test_routes import Client, bound_login, dpop_challenge


async def test_a_dpop_login_works_under_a_deployment_prefix(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url), root_path="/api"):
        client = Client(h)
        email = await h.create_user()
        response = await h.client.post(
            "/api/auth/login",
            json={"email": email, "password": PASSWORD},
            headers={"DPoP": client.proof("POST", "/api/auth/login")},
        )
        assert response.status_code == 200, response.text[:200]
        doubled = await h.client.post(
            "/api/auth/login",
            json={"email": email, "password": PASSWORD},
            headers={"DPoP": client.proof("POST", "/api/api/auth/login")},
        )
        assert doubled.status_code == 400, doubled.text[:200]


async def test_a_proof_for_another_origin_is_refused_whatever_the_host_header(
    database_url: str,
) -> None:
    settings = make_settings(database_url, dpop_origins=["http://testserver"])
    async for h in start_harness(settings):
        client, tokens = await bound_login(h)
        access = tokens["access_token"]
        # A proof the client made for another server that has the same path.
        elsewhere = client.proof("GET", "http://rs.other.example/auth/me", token=access)
        response = await h.client.get(
            "/auth/me",
            headers={
                "Authorization": f"DPoP {access}",
                "DPoP": elsewhere,
                "Host": "rs.other.example",
            },
        )
        dpop_challenge(response, "invalid_dpop_proof")
        assert (await client.me(access)).status_code == 200  # the configured origin works


def test_in_production_proofs_name_the_issuers_origin() -> None:
    settings = make_settings(
        "sqlite+aiosqlite:///x.db",
        environment="production",
        secret_key="Zx8#qL2!vN9@tR4$wK7^mP3&yB6*cH1(",
        jwt_issuer="https://auth.example.com/tenant",
        password_hash_profile="owasp",
    )
    assert settings.proof_origins == ["https://auth.example.com"]
    assert make_settings("sqlite+aiosqlite:///x.db").proof_origins == []
    with pytest.raises(ValueError, match="DPOP_ORIGINS"):
        make_settings("sqlite+aiosqlite:///x.db", dpop_origins=["https://a.example/path"])
