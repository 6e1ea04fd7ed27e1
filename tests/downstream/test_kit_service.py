"""The kit against the real auth service: tokens from real logins, its JWKS and discovery, key
rotation through its CLI, and the live check through its /auth/verify."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
import jwt
import pytest
from authsvc_kit import (
    PRINCIPAL_SCOPE_KEY,
    AuthMiddleware,
    InvalidToken,
    Kit,
    SessionRevoked,
    TokenExpired,
)
from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.auth.tokens import AccessTokenCodec
from app.core.clock import Clock
from app.core.db import create_engine
from app.keys.service import KeySet, load_key_ring
from tests.conftest import TEST_SECRET
from tests.downstream.conftest import login, notes_service, service_config
from tests.downstream.issuer import new_key
from tests.support.cli import cli
from tests.support.servers import AUDIENCE

pytestmark = pytest.mark.slow


async def _codec(
    database_url: str, issuer: str, *, audience: str = AUDIENCE, ttl: int = 300
) -> AccessTokenCodec:
    """The service's own token codec over its key ring in the database: tokens as it would sign
    them, with the issuer, audience and lifetime the test picks."""
    engine = create_engine(database_url)
    try:
        ring = await load_key_ring(
            engine, secret=TEST_SECRET, now=Clock().now(), token_lifetime=timedelta(hours=1)
        )
    finally:
        await engine.dispose()
    return AccessTokenCodec(KeySet(ring), issuer=issuer, audience=audience, ttl=ttl, leeway=0)


def _issue(codec: AccessTokenCodec, *, seconds_ago: float = 0) -> str:
    return codec.issue(
        user_id=uuid.uuid4(),
        session_id=uuid.uuid4(),
        role="user",
        now=Clock().now() - timedelta(seconds=seconds_ago),
    ).token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hs256_with_public_key(token: str, public_pem: bytes) -> str:
    """The classic confusion attack: the same claims, HMAC-signed with the public key."""
    header = {**jwt.get_unverified_header(token), "alg": "HS256"}
    claims = jwt.decode(token, options={"verify_signature": False})
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


async def test_real_login_token_accepted_by_notes_and_refused_without(
    auth_service: str, sqlite_url: str
) -> None:
    tokens = await login(auth_service, sqlite_url)
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    with notes_service(auth_service, audience=AUDIENCE) as notes:
        async with httpx.AsyncClient(base_url=notes, timeout=10) as client:
            ok = await client.get(
                "/notes", headers={"Authorization": f"Bearer {tokens['access_token']}"}
            )
            missing = await client.get("/notes")
            bad = await client.get("/notes", headers={"Authorization": "Bearer not.a.token"})
    assert ok.status_code == 200, ok.text
    identity = ok.json()["identity"]
    assert identity["user_id"] == claims["sub"]
    assert identity["session_id"] == claims["sid"]
    assert identity["role"] == "user"
    assert identity["client_id"] == claims["client_id"]
    assert identity["expires_at"] == claims["exp"]
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "not_authenticated"
    assert bad.status_code == 401
    assert bad.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert bad.json()["error"]["code"] == "invalid_token"


async def test_middleware_on_a_plain_starlette_app(auth_service: str, sqlite_url: str) -> None:
    """The pure ASGI middleware puts the principal in the scope of any ASGI app."""

    async def whoami(request: Request) -> JSONResponse:
        principal = request.scope.get(PRINCIPAL_SCOPE_KEY)
        return JSONResponse({"sub": principal.user_id if principal else None})

    kit = Kit(service_config(auth_service))
    app = AuthMiddleware(Starlette(routes=[Route("/", whoami)]), kit, required=True)
    tokens = await login(auth_service, sqlite_url)
    async with (
        kit.lifespan(),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://downstream"
        ) as client,
    ):
        ok = await client.get("/", headers={"Authorization": f"Bearer {tokens['access_token']}"})
        refused = await client.get("/")
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert ok.json() == {"sub": claims["sub"]}
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == "Bearer"


async def test_refused_tokens(auth_service: str, sqlite_url: str, service_kit: Kit) -> None:
    good = await _codec(sqlite_url, auth_service)
    principal = await service_kit.authenticate(_issue(good))
    assert principal.role == "user"

    with pytest.raises(TokenExpired):
        await service_kit.authenticate(
            _issue(await _codec(sqlite_url, auth_service, ttl=5), seconds_ago=60)
        )
    wrong_aud = await _codec(sqlite_url, auth_service, audience="someone-else")
    with pytest.raises(InvalidToken):
        await service_kit.authenticate(_issue(wrong_aud))
    wrong_iss = await _codec(sqlite_url, "https://evil.example")
    with pytest.raises(InvalidToken):
        await service_kit.authenticate(_issue(wrong_iss))

    token = _issue(good)
    kid = jwt.get_unverified_header(token)["kid"]
    signer = good._keys.ring.verifiers[kid]  # noqa: SLF001 - the service's public key
    public_pem = signer.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(InvalidToken):
        await service_kit.authenticate(_hs256_with_public_key(token, public_pem))
    claims = jwt.decode(token, options={"verify_signature": False})
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": kid, "typ": "at+jwt"})
    with pytest.raises(InvalidToken):
        await service_kit.authenticate(unsigned)
    stranger = new_key()
    forged = jwt.encode(
        claims, stranger.private, algorithm="ES256", headers={"kid": stranger.kid, "typ": "at+jwt"}
    )
    with pytest.raises(InvalidToken):
        await service_kit.authenticate(forged)
    impostor = jwt.encode(
        claims, stranger.private, algorithm="ES256", headers={"kid": kid, "typ": "at+jwt"}
    )
    with pytest.raises(InvalidToken):
        await service_kit.authenticate(impostor)
    untyped = jwt.encode(claims, "", algorithm="none")
    with pytest.raises(InvalidToken):
        await service_kit.authenticate(untyped)


async def test_jwks_refetched_on_unknown_kid_at_a_bounded_rate(
    auth_service: str, sqlite_url: str
) -> None:
    kit = Kit(service_config(auth_service, min_refetch_interval=1.0))
    async with kit.lifespan():
        first = await login(auth_service, sqlite_url)
        await kit.authenticate(first["access_token"])
        assert kit.keys.fetches == 1
        fetched_at = time.monotonic()

        # A burst of unknown kids: at most one more fetch per interval, whatever their number.
        stranger = new_key()
        claims = jwt.decode(first["access_token"], options={"verify_signature": False})
        unknown = [
            jwt.encode(
                claims,
                stranger.private,
                algorithm="ES256",
                headers={"kid": f"unknown-{i}", "typ": "at+jwt"},
            )
            for i in range(50)
        ]
        results = await asyncio.gather(
            *(kit.authenticate(token) for token in unknown), return_exceptions=True
        )
        assert all(isinstance(r, InvalidToken) for r in results)
        assert kit.keys.fetches == 1  # within the interval of the first fetch: none at all

        rotated = await cli(sqlite_url, "keys", "rotate", "--now")
        assert rotated.returncode == 0, rotated.stderr
        old_kid = jwt.get_unverified_header(first["access_token"])["kid"]
        deadline = time.monotonic() + 10
        while True:  # the service signs with the new key from its next reload (1 s)
            fresh = await login(auth_service, sqlite_url)
            if jwt.get_unverified_header(fresh["access_token"])["kid"] != old_kid:
                break
            assert time.monotonic() < deadline, "the service never signed with the new key"
            await asyncio.sleep(0.2)
        await asyncio.sleep(max(0.0, fetched_at + 1.0 - time.monotonic()))
        principal = await kit.authenticate(fresh["access_token"])
        assert (
            principal.user_id
            == jwt.decode(fresh["access_token"], options={"verify_signature": False})["sub"]
        )
        assert kit.keys.fetches == 2
        results = await asyncio.gather(
            *(kit.authenticate(token) for token in unknown), return_exceptions=True
        )
        assert all(isinstance(r, InvalidToken) for r in results)
        assert kit.keys.fetches == 2
        await kit.authenticate(first["access_token"])  # the old key still verifies its tokens


async def test_live_check_refuses_a_revoked_session(auth_service: str, sqlite_url: str) -> None:
    # A TTL well above two calls' gap on a loaded machine (0.3 s was not, under CI load).
    kit = Kit(service_config(auth_service, live_check=True, live_check_ttl=2.0))
    tokens = await login(auth_service, sqlite_url)
    bearer = {"Authorization": f"Bearer {tokens['access_token']}"}
    async with kit.lifespan():
        await kit.authenticate(tokens["access_token"])
        await kit.authenticate(tokens["access_token"])
        assert kit.live is not None
        assert kit.live.calls == 1
        async with httpx.AsyncClient(base_url=auth_service, timeout=10) as client:
            assert (await client.post("/auth/logout", headers=bearer)).status_code == 204
        deadline = time.monotonic() + 5  # the TTL, and the revocation reaching the check
        while True:
            try:
                await kit.authenticate(tokens["access_token"])
            except SessionRevoked:
                break
            assert time.monotonic() < deadline, "the live check kept accepting a revoked session"
            await asyncio.sleep(0.05)
        # Without the live check the token still verifies: only the signature is local.
        local = Kit(service_config(auth_service))
        async with local.lifespan():
            await local.authenticate(tokens["access_token"])


def _ids(claims: dict[str, Any]) -> tuple[str, str]:
    return claims["sub"], claims["sid"]
