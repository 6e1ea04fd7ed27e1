"""RFC 6749 token endpoint: what the /docs "Authorize" button uses."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from app.core.json_body import openapi_body
from tests.conftest import PASSWORD, Harness, bearer


async def test_docs_authorize_flow_calls_protected_routes(harness: Harness) -> None:
    spec = (await harness.client.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    (scheme,) = [s for s in schemes.values() if s["type"] == "oauth2"]
    assert scheme["flows"]["password"]["tokenUrl"] == "/auth/token"
    assert spec["paths"]["/auth/me"]["get"]["security"]
    # Try it out on logout sends the Authorize token only if the operation declares the scheme.
    assert spec["paths"]["/auth/logout"]["post"]["security"] == [{"OAuth2PasswordBearer": []}]
    docs = await harness.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()

    email = await harness.create_user()
    # What Swagger UI sends for the OAuth2 password flow.
    response = await harness.client.post(
        "/auth/token",
        data={"grant_type": "password", "username": email, "password": PASSWORD, "scope": ""},
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    me = await harness.client.get("/auth/me", headers=bearer(body["access_token"]))
    assert me.status_code == 200
    assert me.json()["email"] == email

    refreshed = await harness.client.post(
        "/auth/token", data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]}
    )
    assert refreshed.status_code == 200
    assert refreshed.json()["refresh_token"] != body["refresh_token"]


async def test_token_endpoint_errors_follow_rfc6749(harness: Harness) -> None:
    email = await harness.create_user()
    cases = [
        (
            {"grant_type": "password", "username": email, "password": "wrong-password"},
            "invalid_grant",
        ),
        ({"grant_type": "password", "username": email}, "invalid_request"),
        ({"grant_type": "refresh_token", "refresh_token": "nope"}, "invalid_grant"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({"grant_type": "implicit"}, "unsupported_grant_type"),
        ({}, "invalid_request"),
    ]
    for data, error in cases:
        response = await harness.client.post("/auth/token", data=data)
        assert response.status_code == 400, (data, response.text)
        assert response.json()["error"] == error
        assert "error_description" in response.json()
        assert response.headers["cache-control"] == "no-store"


async def test_token_endpoint_reuse_revokes_session(harness: Harness) -> None:
    email = await harness.create_user()
    body = (
        await harness.client.post(
            "/auth/token", data={"grant_type": "password", "username": email, "password": PASSWORD}
        )
    ).json()
    first = body["refresh_token"]
    await harness.client.post(
        "/auth/token", data={"grant_type": "refresh_token", "refresh_token": first}
    )
    harness.clock.advance(31)
    replay = await harness.client.post(
        "/auth/token", data={"grant_type": "refresh_token", "refresh_token": first}
    )
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"
    me = await harness.client.get("/auth/me", headers=bearer(body["access_token"]))
    assert me.json()["error"]["code"] == "session_revoked"


async def test_docs_work_offline(harness: Harness) -> None:
    import re

    docs = await harness.client.get("/docs")
    assert docs.status_code == 200
    assert "cdn" not in docs.text.lower()
    assets = re.findall(r"""(?:src|href)=["'](/[^"']+\.(?:js|css))["']""", docs.text)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), assets
    for asset in assets:
        response = await harness.client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 1000
    redirect = await harness.client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200


async def test_openapi_documents_the_refresh_body_and_response(harness: Harness) -> None:
    # /auth/refresh reads its body itself (a hot path); /docs must still show and send it.
    spec = (await harness.client.get("/openapi.json")).json()
    operation = spec["paths"]["/auth/refresh"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body["properties"]["refresh_token"]["anyOf"][0]["maxLength"] == 4096
    assert body["additionalProperties"] is False
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/TokenResponse"}
    assert {"401", "403", "422"} <= set(operation["responses"])


def test_openapi_body_refuses_nested_models() -> None:
    class Inner(BaseModel):
        value: int

    class Outer(BaseModel):
        inner: Inner

    with pytest.raises(ValueError, match="nests models"):
        openapi_body(Outer)
