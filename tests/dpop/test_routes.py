"""DPoP (RFC 9449) through the real app, on both databases, with proofs made by an independent
JOSE library (joserfc): binding at login, refresh and the token endpoint, bound tokens on our
own routes and on forward-auth, nonces, and what a thief holding tokens but not the key gets."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.core.db import table_of
from app.sessions.models import Session
from tests.auth.test_cookie_mode import COOKIE, JSON, cookie_header, csrf_of
from tests.conftest import PASSWORD, Harness, bearer, error_code, make_settings, start_harness

ORIGIN = "http://testserver"
_sessions, _audit = table_of(Session), table_of(AuditEvent)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jkt_of(key: ECKey | RSAKey) -> str:
    """RFC 7638, computed here from the RFC's own recipe, not with the service's code."""
    public = key.as_dict(private=False)
    members = ("crv", "kty", "x", "y") if public["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: public[m] for m in members}, separators=(",", ":"))
    return b64(hashlib.sha256(canonical.encode()).digest())


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


class Client:
    """A DPoP client: one key, proofs for each request (a fresh jti each time)."""

    def __init__(self, h: Harness, key: ECKey | None = None) -> None:
        self.h = h
        self.key = key or ECKey.generate_key("P-256")
        self.nonce: str | None = None

    def proof(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        alg: str = "ES256",
        iat: float | None = None,
        header: dict[str, Any] | None = None,
        signer: Any = None,
        **claims: Any,
    ) -> str:
        head: dict[str, Any] = {
            "typ": "dpop+jwt",
            "alg": alg,
            "jwk": self.key.as_dict(private=False),
        }
        head.update(header or {})
        body: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "htm": method,
            "htu": path if path.startswith("http") else ORIGIN + path,
            "iat": int(iat if iat is not None else self.h.clock.now().timestamp()),
        }
        if token is not None:
            body["ath"] = b64(hashlib.sha256(token.encode()).digest())
        if self.nonce is not None:
            body["nonce"] = self.nonce
        body.update(claims)
        return jose_jwt.encode(head, body, signer or self.key, algorithms=[alg])

    async def login(self, email: str, **headers: str) -> httpx.Response:
        return await self.h.client.post(
            "/auth/login",
            json={"email": email, "password": PASSWORD},
            headers={"DPoP": self.proof("POST", "/auth/login"), **headers},
        )

    async def refresh(self, refresh_token: str) -> httpx.Response:
        return await self.h.client.post(
            "/auth/refresh",
            json={"refresh_token": refresh_token},
            headers={"DPoP": self.proof("POST", "/auth/refresh")},
        )

    async def me(self, token: str, **headers: str) -> httpx.Response:
        return await self.h.client.get(
            "/auth/me",
            headers={
                "Authorization": f"DPoP {token}",
                "DPoP": self.proof("GET", "/auth/me", token=token),
                **headers,
            },
        )


async def bound_login(h: Harness) -> tuple[Client, dict[str, Any]]:
    client = Client(h)
    response = await client.login(await h.create_user())
    assert response.status_code == 200, response.text
    return client, response.json()


async def audit_count(h: Harness, event: str) -> int:
    async with h.ctx.engine.connect() as conn:
        rows = await conn.execute(select(_audit.c.id).where(_audit.c.event == event))
        return len(rows.all())


def dpop_challenge(response: httpx.Response, error: str) -> None:
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("DPoP "), challenge
    assert f'error="{error}"' in challenge
    assert 'algs="' in challenge
    assert error_code(response) == error


async def test_a_proof_at_login_binds_the_session_and_its_tokens(harness: Harness) -> None:
    client, tokens = await bound_login(harness)
    assert tokens["token_type"] == "DPoP"
    assert claims_of(tokens["access_token"])["cnf"] == {"jkt": jkt_of(client.key)}
    async with harness.ctx.engine.connect() as conn:
        stored = await conn.execute(
            select(_sessions.c.dpop_jkt).where(_sessions.c.id == uuid.UUID(tokens["session"]["id"]))
        )
        assert stored.scalar_one() == jkt_of(client.key)
    me = await client.me(tokens["access_token"])
    assert me.status_code == 200, me.text
    # Later refreshes keep the binding, with proofs by the same key.
    rotated = await client.refresh(tokens["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["token_type"] == "DPoP"
    assert claims_of(rotated.json()["access_token"])["cnf"] == {"jkt": jkt_of(client.key)}


async def test_without_a_proof_nothing_is_bound(harness: Harness) -> None:
    tokens = await harness.login(await harness.create_user())
    assert tokens["token_type"] == "Bearer"
    assert "cnf" not in claims_of(tokens["access_token"])
    assert (
        await harness.client.get("/auth/me", headers=bearer(tokens["access_token"]))
    ).status_code == 200
    # An unbound token is never presented under the DPoP scheme.
    dpop_challenge(await Client(harness).me(tokens["access_token"]), "invalid_token")


async def test_a_stolen_refresh_token_is_useless_without_the_key(harness: Harness) -> None:
    client, tokens = await bound_login(harness)
    stolen = tokens["refresh_token"]
    refused_before = await audit_count(harness, "refresh.dpop_refused")
    # Counted before and after: other tests share the database.
    reuse_before = await audit_count(harness, "refresh.reuse_detected")
    without = await harness.refresh(stolen)
    assert without.status_code == 400
    assert error_code(without) == "invalid_dpop_proof"
    other = await Client(harness).refresh(stolen)  # the thief's own key
    assert other.status_code == 400
    assert error_code(other) == "invalid_dpop_proof"
    assert await audit_count(harness, "refresh.dpop_refused") == refused_before + 2
    # The owner is not logged out: the same token rotates, as a first use, and the session lives.
    mine = await client.refresh(stolen)
    assert mine.status_code == 200, mine.text
    assert (await client.me(mine.json()["access_token"])).status_code == 200
    assert await audit_count(harness, "refresh.reuse_detected") == reuse_before


async def test_stolen_cookies_cannot_refresh_a_bound_browser_session(harness: Harness) -> None:
    client = Client(harness)
    login = await client.login(await harness.create_user(), **COOKIE)
    assert login.status_code == 200, login.text
    assert login.json()["token_type"] == "DPoP"
    jar = {
        **COOKIE,
        **JSON,
        **cookie_header(login, "/auth/refresh"),
        "X-CSRF-Token": csrf_of(login),
    }
    stolen = await harness.client.post("/auth/refresh", content=b"{}", headers=jar)
    assert stolen.status_code == 400
    assert error_code(stolen) == "invalid_dpop_proof"
    other = Client(harness).proof("POST", "/auth/refresh")
    assert (
        await harness.client.post("/auth/refresh", content=b"{}", headers={**jar, "DPoP": other})
    ).status_code == 400
    proof = client.proof("POST", "/auth/refresh")
    mine = await harness.client.post("/auth/refresh", content=b"{}", headers={**jar, "DPoP": proof})
    assert mine.status_code == 200, mine.text
    assert claims_of(mine.json()["access_token"])["cnf"] == {"jkt": jkt_of(client.key)}


async def test_a_bound_token_needs_its_proof_on_every_protected_request(harness: Harness) -> None:
    client, tokens = await bound_login(harness)
    access = tokens["access_token"]
    me = "/auth/me"
    dpop_challenge(await harness.client.get(me, headers=bearer(access)), "invalid_dpop_proof")
    # Bearer is refused even with a good proof: RFC 9449 §7.1 wants the DPoP scheme.
    with_proof = {**bearer(access), "DPoP": client.proof("GET", me, token=access)}
    dpop_challenge(await harness.client.get(me, headers=with_proof), "invalid_dpop_proof")
    no_proof = await harness.client.get(me, headers={"Authorization": f"DPoP {access}"})
    dpop_challenge(no_proof, "invalid_dpop_proof")
    proof = client.proof("GET", me, token=access)
    both = {"Authorization": f"DPoP {access}", "DPoP": proof}
    assert (await harness.client.get(me, headers=both)).status_code == 200
    dpop_challenge(await harness.client.get(me, headers=both), "invalid_dpop_proof")  # replayed
    cases = {
        "another method": client.proof("POST", me, token=access),
        "another URL": client.proof("GET", "/auth/session-status", token=access),
        "no ath": client.proof("GET", me),
        "another token's ath": client.proof("GET", me, token=tokens["refresh_token"]),
        "another key": Client(harness).proof("GET", me, token=access),
    }
    for case, bad in cases.items():
        response = await harness.client.get(
            me, headers={"Authorization": f"DPoP {access}", "DPoP": bad}
        )
        assert response.status_code == 401, case
        dpop_challenge(response, "invalid_dpop_proof")
    two = [
        ("Authorization", f"DPoP {access}"),
        ("DPoP", client.proof("GET", me, token=access)),
        ("DPoP", client.proof("GET", me, token=access)),
    ]
    dpop_challenge(await harness.client.get(me, headers=two), "invalid_dpop_proof")


def _hs256_proof(client: Client) -> str:
    secret = OctKey.import_key(b"k" * 32)
    return client.proof(
        "POST",
        "/auth/login",
        alg="HS256",
        signer=secret,
        header={"jwk": {"kty": "oct", "k": b64(b"k" * 32)}},
    )


def _none_proof(client: Client) -> str:
    head = {"typ": "dpop+jwt", "alg": "none", "jwk": client.key.as_dict(private=False)}
    body = {
        "jti": uuid.uuid4().hex,
        "htm": "POST",
        "htu": ORIGIN + "/auth/login",
        "iat": int(client.h.clock.now().timestamp()),
    }
    return f"{b64(json.dumps(head).encode())}.{b64(json.dumps(body).encode())}."


BAD_LOGIN_PROOFS: dict[str, Callable[[Client], str]] = {
    "wrong typ": lambda c: c.proof("POST", "/auth/login", header={"typ": "JWT"}),
    "another method": lambda c: c.proof("PUT", "/auth/login"),
    "another URL": lambda c: c.proof("POST", "/auth/refresh"),
    "another host": lambda c: c.proof("POST", "https://evil.example/auth/login"),
    "stale iat": lambda c: c.proof("POST", "/auth/login", iat=c.h.clock.now().timestamp() - 120),
    "future iat": lambda c: c.proof("POST", "/auth/login", iat=c.h.clock.now().timestamp() + 120),
    "private key in jwk": lambda c: c.proof(
        "POST", "/auth/login", header={"jwk": c.key.as_dict(private=True)}
    ),
    "signed by another key": lambda c: c.proof(
        "POST", "/auth/login", signer=ECKey.generate_key("P-256")
    ),
    "alg none": _none_proof,
    "HS256": _hs256_proof,
    "not a JWT": lambda c: "not-a-jwt",
}


@pytest.mark.parametrize("case", list(BAD_LOGIN_PROOFS))
async def test_a_bad_proof_at_login_is_refused_and_changes_nothing(
    harness: Harness, case: str
) -> None:
    client = Client(harness)
    email = await harness.create_user()
    before = await audit_count(harness, "login.succeeded")
    response = await harness.client.post(
        "/auth/login",
        json={"email": email, "password": PASSWORD},
        headers={"DPoP": BAD_LOGIN_PROOFS[case](client)},
    )
    assert response.status_code == 400, response.text
    assert error_code(response) == "invalid_dpop_proof"
    assert await audit_count(harness, "login.succeeded") == before


async def test_a_replayed_login_proof_is_refused(harness: Harness) -> None:
    client = Client(harness)
    email = await harness.create_user()
    proof = client.proof("POST", "/auth/login")
    body = {"email": email, "password": PASSWORD}
    assert (
        await harness.client.post("/auth/login", json=body, headers={"DPoP": proof})
    ).status_code == 200
    again = await harness.client.post("/auth/login", json=body, headers={"DPoP": proof})
    assert again.status_code == 400
    assert error_code(again) == "invalid_dpop_proof"


async def test_the_token_endpoint_binds_and_answers_in_oauth_shape(harness: Harness) -> None:
    client = Client(harness)
    email = await harness.create_user()
    form = {"grant_type": "password", "username": email, "password": PASSWORD}
    issued = await harness.client.post(
        "/auth/token", data=form, headers={"DPoP": client.proof("POST", "/auth/token")}
    )
    assert issued.status_code == 200, issued.text
    assert issued.json()["token_type"] == "DPoP"
    assert claims_of(issued.json()["access_token"])["cnf"] == {"jkt": jkt_of(client.key)}
    refresh = {"grant_type": "refresh_token", "refresh_token": issued.json()["refresh_token"]}
    stolen = await harness.client.post("/auth/token", data=refresh)
    assert stolen.status_code == 400
    assert stolen.json()["error"] == "invalid_dpop_proof"
    bad = await harness.client.post("/auth/token", data=form, headers={"DPoP": "garbage"})
    assert bad.status_code == 400
    assert bad.json()["error"] == "invalid_dpop_proof"
    mine = await harness.client.post(
        "/auth/token", data=refresh, headers={"DPoP": client.proof("POST", "/auth/token")}
    )
    assert mine.status_code == 200, mine.text
    assert mine.json()["token_type"] == "DPoP"


@pytest.fixture
async def nonce_replicas(database_url: str) -> AsyncIterator[tuple[Harness, Harness]]:
    """Two replicas of one deployment (one database, one SECRET_KEY), nonces required."""
    settings = make_settings(database_url, dpop_nonce_required=True)
    async for a in start_harness(settings):
        async for b in start_harness(settings):
            yield a, b


async def test_nonces_are_asked_for_and_work_on_every_replica(
    nonce_replicas: tuple[Harness, Harness],
) -> None:
    a, b = nonce_replicas
    client = Client(a)
    email = await a.create_user()
    first = await client.login(email)
    assert first.status_code == 400
    assert error_code(first) == "use_dpop_nonce"
    client.nonce = first.headers["dpop-nonce"]
    # The nonce replica A handed out is good on replica B.
    on_b = Client(b, client.key)
    on_b.nonce = client.nonce
    login = await on_b.login(email)
    assert login.status_code == 200, login.text
    assert login.headers["dpop-nonce"]
    tokens = login.json()
    me = await Client(a, client.key).me(tokens["access_token"])  # no nonce: asked for one
    dpop_challenge(me, "use_dpop_nonce")
    assert me.headers["dpop-nonce"]
    assert (await client.me(tokens["access_token"])).status_code == 200
    token_form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    no_nonce = await b.client.post(
        "/auth/token",
        data=token_form,
        headers={"DPoP": Client(b, client.key).proof("POST", "/auth/token")},
    )
    assert no_nonce.status_code == 400
    assert no_nonce.json()["error"] == "use_dpop_nonce"
    assert no_nonce.headers["dpop-nonce"]
    stale = Client(a, client.key)
    stale.nonce = "1.AAAA"
    dpop_challenge(await stale.me(tokens["access_token"]), "use_dpop_nonce")


async def test_a_proof_accepted_by_one_replica_is_refused_by_another(database_url: str) -> None:
    """The replay cache is the database (no Redis here), which every replica shares."""
    settings = make_settings(database_url)
    async for a in start_harness(settings):
        async for b in start_harness(settings):
            client, tokens = await bound_login(a)
            access = tokens["access_token"]
            headers = {
                "Authorization": f"DPoP {access}",
                "DPoP": client.proof("GET", "/auth/me", token=access),
            }
            assert (await a.client.get("/auth/me", headers=headers)).status_code == 200
            dpop_challenge(await b.client.get("/auth/me", headers=headers), "invalid_dpop_proof")


async def test_dpop_required_refuses_unbound_sessions(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url, dpop_required=True)):
        email = await h.create_user()
        plain = await h.client.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert plain.status_code == 400
        assert error_code(plain) == "invalid_dpop_proof"
        form = {"grant_type": "password", "username": email, "password": PASSWORD}
        assert (await h.client.post("/auth/token", data=form)).json()[
            "error"
        ] == "invalid_dpop_proof"
        client, tokens = await bound_login(h)
        assert tokens["token_type"] == "DPoP"


@pytest.mark.parametrize(
    "forwarded",
    [
        {"X-Original-Method": "DELETE", "X-Original-URL": "https://api.example/notes/7?x=1"},
        {
            "X-Forwarded-Method": "DELETE",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "api.example",
            "X-Forwarded-Uri": "/notes/7?x=1",
        },
    ],
    ids=["nginx", "traefik"],
)
async def test_forward_auth_checks_the_proof_against_the_original_request(
    harness: Harness, forwarded: dict[str, str]
) -> None:
    client, tokens = await bound_login(harness)
    access = tokens["access_token"]
    auth = {"Authorization": f"DPoP {access}", **forwarded}
    good = client.proof("DELETE", "https://api.example/notes/7", token=access)
    verified = await harness.client.get("/auth/verify", headers={**auth, "DPoP": good})
    assert verified.status_code == 200, verified.text
    assert verified.headers["x-auth-session-id"] == tokens["session"]["id"]
    for bad in (
        client.proof("GET", "https://api.example/notes/7", token=access),
        client.proof("DELETE", ORIGIN + "/auth/verify", token=access),
    ):
        refused = await harness.client.get("/auth/verify", headers={**auth, "DPoP": bad})
        dpop_challenge(refused, "invalid_dpop_proof")
        assert refused.headers["x-auth-error"] == "invalid_dpop_proof"
    bearer_use = await harness.client.get("/auth/verify", headers={**bearer(access), **forwarded})
    dpop_challenge(bearer_use, "invalid_dpop_proof")


async def test_introspection_and_discovery_speak_dpop(database_url: str) -> None:
    settings = make_settings(database_url, introspection_clients={"gw": "gateway-secret-9"})
    async for h in start_harness(settings):
        client, tokens = await bound_login(h)
        basic = "Basic " + base64.b64encode(b"gw:gateway-secret-9").decode()
        result = await h.client.post(
            "/auth/introspect",
            data={"token": tokens["access_token"]},
            headers={"Authorization": basic},
        )
        assert result.json()["cnf"] == {"jkt": jkt_of(client.key)}
        refresh = await h.client.post(
            "/auth/introspect",
            data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
            headers={"Authorization": basic},
        )
        assert refresh.json()["token_type"] == "refresh_token"
        assert refresh.json()["cnf"] == {"jkt": jkt_of(client.key)}
        plain = await h.login(await h.create_user())
        unbound = await h.client.post(
            "/auth/introspect",
            data={"token": plain["access_token"]},
            headers={"Authorization": basic},
        )
        assert "cnf" not in unbound.json()
        unbound_refresh = await h.client.post(
            "/auth/introspect",
            data={"token": plain["refresh_token"]},
            headers={"Authorization": basic},
        )
        assert unbound_refresh.json()["active"] is True
        assert "cnf" not in unbound_refresh.json()
        for path in (
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
        ):
            metadata = (await h.client.get(path)).json()
            assert "ES256" in metadata["dpop_signing_alg_values_supported"]
            assert "HS256" not in metadata["dpop_signing_alg_values_supported"]


async def test_an_rsa_key_binds_too(harness: Harness) -> None:
    client = Client(harness, RSAKey.generate_key(2048))  # type: ignore[arg-type]
    email = await harness.create_user()
    proof = client.proof("POST", "/auth/login", alg="PS256")
    response = await harness.client.post(
        "/auth/login", json={"email": email, "password": PASSWORD}, headers={"DPoP": proof}
    )
    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["cnf"] == {"jkt": jkt_of(client.key)}


async def test_token_refusals_under_the_dpop_scheme_carry_a_dpop_challenge(
    harness: Harness,
) -> None:
    """An expired or revoked bound token: the same code as under Bearer, challenged with the
    scheme the client used (RFC 9449 §7.1), so a DPoP client knows to refresh or log in."""
    client, tokens = await bound_login(harness)
    access = tokens["access_token"]
    harness.clock.advance(3600)
    expired = await client.me(access)
    assert expired.status_code == 401
    assert error_code(expired) == "token_expired"
    challenge = expired.headers["www-authenticate"]
    assert challenge.startswith("DPoP ")
    assert 'error="invalid_token", error_description="token_expired"' in challenge


async def test_a_frontend_on_another_origin_may_send_proofs_and_read_nonces(
    database_url: str,
) -> None:
    origin = "https://app.example.com"
    settings = make_settings(database_url, cors_origins=[origin], dpop_nonce_required=True)
    async for h in start_harness(settings):
        preflight = await h.client.options(
            "/auth/login",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, dpop",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert "dpop" in preflight.headers["access-control-allow-headers"].lower()
        asked = await Client(h).login(await h.create_user(), Origin=origin)
        assert error_code(asked) == "use_dpop_nonce"
        exposed = asked.headers["access-control-expose-headers"].lower()
        assert "dpop-nonce" in exposed
        assert "www-authenticate" in exposed
