"""Gateway mode: JWKS, discovery, key rotation, forward-auth and RFC 7662 introspection."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet
from sqlalchemy import select, update

from app.audit.models import AuditEvent
from app.context import reload_keys
from app.core import migrate
from app.core.db import table_of
from app.keys import service as keys
from app.users.models import User
from tests.conftest import PASSWORD, Harness, bearer, make_settings, start_harness
from tests.support.servers import started_together, uvicorn_server

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "k", "oth"}


def verify_independently(jwks: dict[str, Any], token: str) -> dict[str, Any]:
    """Verify with joserfc (not PyJWT, which the service uses) from the JWKS document alone."""
    key_set = KeySet.import_key_set(cast(Any, jwks))
    decoded = jose_jwt.decode(token, key_set, algorithms=["ES256", "EdDSA"])
    claims: dict[str, Any] = dict(decoded.claims)
    return claims


_audit = table_of(AuditEvent)


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def test_jwks_publishes_public_material_only(harness: Harness) -> None:
    response = await harness.client.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "public, max-age=300"
    entries = response.json()["keys"]
    assert entries
    assert len({e["kid"] for e in entries}) == len(entries)
    for entry in entries:
        assert entry["use"] == "sig"
        assert entry["alg"] in {"ES256", "EdDSA", "RS256"}
        assert not PRIVATE_MEMBERS & entry.keys()


@pytest.mark.parametrize(
    "path", ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"]
)
async def test_discovery_document_points_at_the_keys(harness: Harness, path: str) -> None:
    response = await harness.client.get(path)
    assert response.status_code == 200
    doc = response.json()
    assert doc["issuer"] == "https://auth.test"
    assert doc["jwks_uri"] == "https://auth.test/.well-known/jwks.json"
    assert doc["token_endpoint"] == "https://auth.test/auth/token"
    assert doc["introspection_endpoint"] == "https://auth.test/auth/introspect"
    # Only what is true (issue 16): no ID tokens, no implicit flow, no authorization endpoint.
    assert not [name for name in doc if name.startswith("id_token")]
    assert doc["response_types_supported"] == []
    assert "authorization_endpoint" not in doc
    assert set(doc["grant_types_supported"]) == {"password", "refresh_token", "client_credentials"}


async def test_tokens_verify_with_an_independent_library(harness: Harness) -> None:
    tokens = await harness.login(await harness.create_user())
    jwks = (await harness.client.get("/.well-known/jwks.json")).json()
    claims = verify_independently(jwks, tokens["access_token"])
    assert claims["sid"] == tokens["session"]["id"]
    assert claims["iss"] == "https://auth.test"
    assert claims["aud"] == "authsvc-test"
    assert claims["client_id"] == "authsvc"  # RFC 9068 §2.2: the first-party client


async def test_the_client_id_claim_is_configurable(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url, jwt_client_id="shop-frontend")):
        tokens = await h.login(await h.create_user())
        jwks = (await h.client.get("/.well-known/jwks.json")).json()
        assert verify_independently(jwks, tokens["access_token"])["client_id"] == "shop-frontend"


async def test_key_rotation_drill_with_a_caching_gateway(tmp_path: Path) -> None:
    """A gateway caches JWKS for max-age and never refetches early; keys rotate twice; every
    token the service issues along the way verifies at the gateway."""
    url = f"sqlite+aiosqlite:///{tmp_path}/drill.db"
    await asyncio.to_thread(migrate.upgrade, url)
    settings = make_settings(url, jwks_max_age=60, key_reload_interval=10, access_token_ttl=120)
    async for h in start_harness(settings):
        email = await h.create_user()
        cached_jwks, cached_at = (await h.client.get("/.well-known/jwks.json")).json(), 0
        refresh_token = (await h.login(email))["refresh_token"]
        issued: list[tuple[int, str]] = []
        rotations = {0, 400}
        for step in range(0, 900, 5):  # 15 minutes of simulated time, 5 s apart
            if step in rotations:
                await keys.rotate(
                    h.ctx.engine,
                    algorithm="ES256",
                    secret=settings.secret_key.get_secret_value(),
                    now=h.clock.now(),
                    publish_delay=timedelta(seconds=settings.publish_delay),
                    token_lifetime=settings.token_lifetime,
                )
            if step % settings.key_reload_interval == 0:
                await reload_keys(h.ctx)
            if step - cached_at >= settings.jwks_max_age:
                cached_jwks = (await h.client.get("/.well-known/jwks.json")).json()
                cached_at = step
            response = await h.refresh(refresh_token)
            assert response.status_code == 200, response.text
            refresh_token = response.json()["refresh_token"]
            issued.append((step, response.json()["access_token"]))
            # Every token still within its lifetime verifies against the cached JWKS.
            for when, token in issued:
                if step - when < 120:
                    verify_independently(cached_jwks, token)
            h.clock.advance(5)
        kids = {
            jose_jwt.decode(t, KeySet.import_key_set(cast(Any, cached_jwks))).header["kid"]
            for s, t in issued
            if 900 - s < 120
        }
        assert len(kids) == 1
        statuses = await keys.list_keys(
            h.ctx.engine, now=h.clock.now(), token_lifetime=settings.token_lifetime
        )
        assert [s.state for s in statuses] == ["active"]  # two keys retired along the way


async def test_openapi_operation_ids_are_unique(harness: Harness) -> None:
    """Client generators refuse a document that repeats an operationId; /auth/verify answers
    every method and documents each (the explorer showed GET only)."""
    spec = (await harness.client.get("/openapi.json")).json()
    ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids))
    methods = {"get", "head", "post", "put", "patch", "delete", "options"}
    assert set(spec["paths"]["/auth/verify"]) == methods


async def test_introspection_basic_scheme_says_it_is_for_gateways(harness: Harness) -> None:
    """The /docs Authorize dialog lists every scheme: the introspection clients' Basic one
    must not read as a user's login, and the users' password flow comes first."""
    spec = (await harness.client.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert list(schemes) == ["OAuth2PasswordBearer", "IntrospectionClient"]
    assert schemes["IntrospectionClient"]["description"].startswith("Gateways only")
    assert spec["paths"]["/auth/introspect"]["post"]["security"] == [{"IntrospectionClient": []}]


async def test_verify_forward_auth(harness: Harness) -> None:
    tokens = await harness.login(await harness.create_user())
    for method in ("GET", "POST", "HEAD", "DELETE", "PUT", "PATCH", "OPTIONS"):
        response = await harness.client.request(
            method, "/auth/verify", headers=bearer(tokens["access_token"])
        )
        assert response.status_code == 200, method
        assert response.headers["x-auth-session-id"] == tokens["session"]["id"]
        assert response.headers["x-auth-role"] == "user"
        uuid.UUID(response.headers["x-auth-user-id"])
    for headers, code in (
        ({}, "not_authenticated"),
        (bearer("x.y.z"), "invalid_token"),
        ({"Authorization": "Basic Zm9vOmJhcg=="}, "not_authenticated"),
    ):
        denied = await harness.client.get("/auth/verify", headers=headers)
        assert denied.status_code == 401
        assert denied.headers["x-auth-error"] == code
        assert denied.headers["www-authenticate"].startswith("Bearer")
    harness.clock.advance(400)
    expired = await harness.client.get("/auth/verify", headers=bearer(tokens["access_token"]))
    assert expired.headers["x-auth-error"] == "token_expired"


async def test_introspection(database_url: str) -> None:
    settings = make_settings(database_url, introspection_clients={"nginx": "gateway-secret-1"})
    async for h in start_harness(settings):
        tokens = await h.login(await h.create_user())
        url = "/auth/introspect"
        no_client = await h.client.post(url, data={"token": tokens["access_token"]})
        assert no_client.status_code == 401
        assert no_client.json()["error"]["code"] == "invalid_client"
        assert no_client.headers["www-authenticate"].startswith("Basic")
        for creds in (basic("nginx", "wrong"), basic("other", "gateway-secret-1")):
            assert (await h.client.post(url, data={"token": "x"}, headers=creds)).status_code == 401
        auth = basic("nginx", "gateway-secret-1")

        access = (
            await h.client.post(url, data={"token": tokens["access_token"]}, headers=auth)
        ).json()
        assert access["active"] is True
        assert access["token_type"] == "access_token"
        assert access["sid"] == tokens["session"]["id"]
        assert access["iss"] == "https://auth.test"
        assert access["aud"] == "authsvc-test"
        assert access["client_id"] == "nginx"
        assert access["exp"] > access["iat"]

        data = {"token": tokens["refresh_token"], "token_type_hint": "refresh_token"}
        refresh = (await h.client.post(url, data=data, headers=auth)).json()
        assert refresh["active"] is True
        assert refresh["token_type"] == "refresh_token"
        assert refresh["sid"] == tokens["session"]["id"]

        garbage = await h.client.post(url, data={"token": "nope"}, headers=auth)
        assert garbage.json() == {"active": False}

        rotated = (await h.refresh(tokens["refresh_token"])).json()
        used = await h.client.post(url, data={"token": tokens["refresh_token"]}, headers=auth)
        assert used.json() == {"active": False}
        await h.client.post("/auth/logout", headers=bearer(rotated["access_token"]))
        for token in (rotated["access_token"], rotated["refresh_token"]):
            after = await h.client.post(url, data={"token": token}, headers=auth)
            assert after.json() == {"active": False}


async def test_logout_on_one_replica_is_seen_by_the_other_at_once(postgres_url: str) -> None:
    email_user = make_settings(postgres_url)
    async for h in start_harness(email_user):
        email = await h.create_user()
    with started_together(uvicorn_server(postgres_url), uvicorn_server(postgres_url)) as [
        (a, _),
        (b, _),
    ]:
        async with httpx.AsyncClient(timeout=10) as client:
            login = await client.post(
                f"{a}/auth/login", json={"email": email, "password": PASSWORD}
            )
            access = login.json()["access_token"]
            assert (await client.get(f"{b}/auth/verify", headers=bearer(access))).status_code == 200
            assert (
                await client.post(f"{a}/auth/logout", headers=bearer(access))
            ).status_code == 204
            started = time.monotonic()
            denied = await client.get(f"{b}/auth/verify", headers=bearer(access))
            assert denied.status_code == 401
            assert denied.headers["x-auth-error"] == "session_revoked"
            assert time.monotonic() - started < 1.0


async def test_introspection_reports_the_current_role(database_url: str) -> None:
    settings = make_settings(database_url, introspection_clients={"gw": "gateway-secret-2"})
    async for h in start_harness(settings):
        email = await h.create_user(role="admin")
        tokens = await h.login(email)
        users_table = table_of(User)
        async with h.ctx.engine.begin() as conn:
            await conn.execute(
                update(users_table).where(users_table.c.email == email).values(role="user")
            )
        answer = await h.client.post(
            "/auth/introspect",
            data={"token": tokens["access_token"]},
            headers=basic("gw", "gateway-secret-2"),
        )
        assert answer.json()["role"] == "user"


async def test_a_forwarded_preflight_never_passes_forward_auth(postgres_url: str) -> None:
    """With CORS on, a preflight (OPTIONS with Access-Control-Request-Method) to the forward-
    auth endpoint gets the token check's answer, never CORS's 200: a gateway forwarding it
    would let an unauthenticated request through. Other routes keep their CORS preflights."""
    origin = "https://app.example.com"
    settings = make_settings(postgres_url, cors_origins=[origin])
    preflight = {"Origin": origin, "Access-Control-Request-Method": "GET"}
    async for h in start_harness(settings):
        refused = await h.client.options("/auth/verify", headers=preflight)
        assert refused.status_code == 401
        assert refused.headers["x-auth-error"] == "not_authenticated"
        tokens = await h.login(await h.create_user())
        allowed = await h.client.options(
            "/auth/verify", headers={**preflight, **bearer(tokens["access_token"])}
        )
        assert allowed.status_code == 200
        assert allowed.headers["x-auth-session-id"] == tokens["session"]["id"]
        cors = await h.client.options("/auth/refresh", headers=preflight)
        assert cors.status_code == 200
        assert cors.headers["access-control-allow-origin"] == origin


async def test_introspection_client_secrets_cannot_be_guessed(database_url: str) -> None:
    """Failed client authentications are audited (the client id tried, never the secret) and
    limited per IP: once used up, the IP gets 429 whatever it sends, the right secret too."""
    client_id, url = f"gw-{uuid.uuid4().hex[:8]}", "/auth/introspect"
    settings = make_settings(
        database_url,
        introspection_clients={client_id: "gateway-secret-3"},
        rate_limits_enabled=True,
        rate_limit_introspect_failures="3/hour",
        rate_limit_namespace=f"test-{uuid.uuid4().hex}",
    )
    async for h in start_harness(settings):
        assert (
            await h.client.post(
                url, data={"token": "x"}, headers=basic(client_id, "gateway-secret-3")
            )
        ).status_code == 200
        for guess in ("guess-1", "guess-2", "guess-3"):
            refused = await h.client.post(url, data={"token": "x"}, headers=basic(client_id, guess))
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_client"
        for creds in (basic(client_id, "guess-4"), basic(client_id, "gateway-secret-3")):
            limited = await h.client.post(url, data={"token": "x"}, headers=creds)
            assert limited.status_code == 429
            assert limited.json()["error"]["code"] == "rate_limited"
            assert int(limited.headers["retry-after"]) > 0
        async with h.ctx.engine.connect() as conn:
            rows = (
                (
                    await conn.execute(
                        select(_audit.c.details).where(
                            _audit.c.event == "introspection.client_failed"
                        )
                    )
                )
                .scalars()
                .all()
            )
        mine = [row for row in rows if row.get("client_id") == client_id]
        assert len(mine) == 3  # the 429s checked nothing, so they are not failures
        assert not any("guess" in str(row) or "secret" in str(row) for row in mine)


async def test_verify_limit_counts_every_request(database_url: str) -> None:
    """Forward-auth counts every request against the IP's limit, refused ones included: a
    flood of bad or revoked tokens meets 429s, not an endless stream of 401s."""
    settings = make_settings(
        database_url,
        rate_limits_enabled=True,
        rate_limit_verify_ip="3/hour",
        rate_limit_namespace=f"test-{uuid.uuid4().hex}",
    )
    async for h in start_harness(settings):
        tokens = await h.login(await h.create_user())
        for headers in ({}, bearer("x.y.z"), bearer(tokens["access_token"] + "x")):
            assert (await h.client.get("/auth/verify", headers=headers)).status_code == 401
        limited = await h.client.get("/auth/verify", headers=bearer(tokens["access_token"]))
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) > 0
        # Other routes of the same client are not affected.
        assert (await h.client.get("/auth/me", headers=bearer(tokens["access_token"]))).is_success
