"""Gateway mode proven with real nginx (auth_request) in front of a tiny upstream."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey

from app.auth.tokens import AccessTokenCodec
from app.core import migrate
from app.core.clock import Clock
from app.core.db import create_engine
from app.keys.service import KeySet, load_key_ring
from bench.gateway import main_conf, render
from tests.conftest import PASSWORD, TEST_SECRET
from tests.support.pgcluster import PgCluster
from tests.support.servers import (
    AUDIENCE,
    ISSUER,
    create_user_in,
    free_port,
    started_together,
    uvicorn_server,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _require_nginx() -> None:
    if not Path(NGINX).exists():
        if os.environ.get("REQUIRE_NGINX") == "1":
            pytest.fail("nginx is not installed (apt-get install -y nginx)")
        pytest.skip("nginx is not installed")


def _render(
    conf: str, *, listen: int, auth: str, upstream: str, notes: str | None, limit: int | None
) -> str:
    rendered = render(conf, listen, [auth], limit).replace(
        "server 127.0.0.1:9000;", f"server {upstream.removeprefix('http://')};"
    )
    if notes is not None:
        rendered = rendered.replace(
            "server 127.0.0.1:9100;", f"server {notes.removeprefix('http://')};"
        )
    return rendered


@contextlib.contextmanager
def run_nginx(
    tmp_path: Path,
    *,
    auth: str,
    upstream: str,
    notes: str | None = None,
    limit: int | None = None,
) -> Iterator[str]:
    """Real nginx with the shipped config, pointed at `auth`, `upstream` and (when given) the
    notes service; yields its URL."""
    _require_nginx()
    listen = free_port()
    site = tmp_path / "authsvc.conf"
    shipped = (ROOT / "deploy/nginx/authsvc.conf").read_text()
    site.write_text(
        _render(shipped, listen=listen, auth=auth, upstream=upstream, notes=notes, limit=limit)
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(main_conf(tmp_path, site))
    check = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    gateway = f"http://127.0.0.1:{listen}"
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{gateway}/.well-known/jwks.json", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield gateway
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextlib.contextmanager
def gateway_stack(
    database_url: str,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    limit: int | None = None,
) -> Iterator[str]:
    """nginx, authsvc and the upstream, all on loopback; yields the gateway URL."""
    _require_nginx()
    upstream_app = "tests.support.upstream:app"
    with (
        started_together(
            uvicorn_server(database_url, env=env),
            uvicorn_server(database_url, factory=upstream_app, is_factory=False),
        ) as [(auth, _), (upstream, _)],
        run_nginx(tmp_path, auth=auth, upstream=upstream, limit=limit) as gateway,
    ):
        yield gateway


async def _user(database_url: str) -> str:
    return await create_user_in(database_url, prefix="gw", role="editor")


async def _signed_earlier(database_url: str, access: str, *, seconds: float) -> str:
    """`access` as the service would have signed it `seconds` ago: its key ring (from the
    database), its issuer and audience, a 5 s TTL."""
    claims = jwt.decode(access, options={"verify_signature": False})
    engine = create_engine(database_url)
    try:
        now = Clock().now()
        ring = await load_key_ring(
            engine, secret=TEST_SECRET, now=now, token_lifetime=timedelta(hours=1)
        )
    finally:
        await engine.dispose()
    codec = AccessTokenCodec(KeySet(ring), issuer=ISSUER, audience=AUDIENCE, ttl=5, leeway=0)
    issued = codec.issue(
        user_id=uuid.UUID(claims["sub"]),
        session_id=uuid.UUID(claims["sid"]),
        role=claims["role"],
        now=now - timedelta(seconds=seconds),
    )
    return issued.token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_nginx_auth_request_end_to_end(postgres_url: str, tmp_path: Path) -> None:
    email = await _user(postgres_url)
    with gateway_stack(postgres_url, tmp_path) as gateway:
        await _end_to_end(gateway, email)


async def _end_to_end(gateway: str, email: str) -> None:
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
        login = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
        tokens: dict[str, Any] = login.json()

        # Valid token: the upstream is reached with the identity headers.
        ok = await client.get("/orders/42", headers=_bearer(tokens["access_token"]))
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["upstream"] is True
        assert body["session_id"] == tokens["session"]["id"]
        assert body["role"] == "editor"

        # A client cannot smuggle its own identity headers past the gateway.
        spoofed = await client.get(
            "/orders/42",
            headers={**_bearer(tokens["access_token"]), "X-Auth-Role": "admin"},
        )
        assert spoofed.json()["role"] == "editor"

        # No token, a malformed token, a forged token: 401 with the reason, upstream untouched.
        for headers, code in (
            ({}, "not_authenticated"),
            (_bearer("garbage"), "invalid_token"),
            (_bearer(tokens["access_token"][:-4] + "AAAA"), "invalid_token"),
        ):
            denied = await client.get("/orders/42", headers=headers)
            assert denied.status_code == 401
            assert denied.headers["x-auth-error"] == code
            assert "upstream" not in denied.text
            # One challenge, authsvc's own (it names the error); not nginx's as well.
            (challenge,) = denied.headers.get_list("www-authenticate")
            assert challenge.startswith("Bearer")

        # authsvc's own pages pass straight through, as the recipe says.
        for page in ("/docs", "/openapi.json", "/redoc", "/demo", "/static/auth-client.js"):
            shown = await client.get(page)
            assert shown.status_code == 200, (page, shown.status_code)

        # Logout: the very next request through the gateway is refused (well within 1 s).
        out = await client.post("/auth/logout", headers=_bearer(tokens["access_token"]))
        assert out.status_code == 204
        started = time.monotonic()
        after = await client.get("/orders/42", headers=_bearer(tokens["access_token"]))
        assert after.status_code == 401
        assert after.headers["x-auth-error"] == "session_revoked"
        assert time.monotonic() - started < 1.0


def _prover() -> Callable[..., str]:
    """Proofs by one new key: proof(method, url, token=None, nonce=None)."""
    key = ECKey.generate_key("P-256")

    def proof(method: str, url: str, token: str | None = None, nonce: str | None = None) -> str:
        claims: dict[str, Any] = {"jti": uuid.uuid4().hex, "htm": method, "htu": url}
        claims["iat"] = int(time.time())
        if token is not None:
            digest = hashlib.sha256(token.encode()).digest()
            claims["ath"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if nonce is not None:
            claims["nonce"] = nonce
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
        return jose_jwt.encode(header, claims, key, algorithms=["ES256"])

    return proof


async def test_nginx_passes_a_dpop_nonce_request_on(postgres_url: str, tmp_path: Path) -> None:
    """With DPOP_NONCE_REQUIRED, the 401 use_dpop_nonce of /auth/verify reaches the client
    with its DPoP-Nonce through the shipped config, and the retry with it passes."""
    email = await _user(postgres_url)
    proof = _prover()
    with gateway_stack(postgres_url, tmp_path, env={"DPOP_NONCE_REQUIRED": "true"}) as gateway:
        async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
            body = {"email": email, "password": PASSWORD}
            asked = await client.post(
                "/auth/login", json=body, headers={"DPoP": proof("POST", f"{gateway}/auth/login")}
            )
            nonce = asked.headers["dpop-nonce"]
            login = await client.post(
                "/auth/login",
                json=body,
                headers={"DPoP": proof("POST", f"{gateway}/auth/login", nonce=nonce)},
            )
            access = login.json()["access_token"]
            url = f"{gateway}/orders/42"
            dpop = {"Authorization": f"DPoP {access}"}
            stale = await client.get(
                "/orders/42", headers={**dpop, "DPoP": proof("GET", url, access, nonce="1.x")}
            )
            assert stale.status_code == 401, stale.text
            assert stale.headers["x-auth-error"] == "use_dpop_nonce"
            fresh = stale.headers["dpop-nonce"]
            retried = await client.get(
                "/orders/42", headers={**dpop, "DPoP": proof("GET", url, access, nonce=fresh)}
            )
            assert retried.status_code == 200, retried.text


async def test_nginx_forward_auth_with_a_dpop_bound_token(
    postgres_url: str, tmp_path: Path
) -> None:
    """The shipped config forwards the original method and URL (X-Original-Method and -URL):
    a bound token passes with its proof for that request, and with nothing else."""
    email = await _user(postgres_url)
    proof = _prover()

    with gateway_stack(postgres_url, tmp_path) as gateway:
        async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
            login = await client.post(
                "/auth/login",
                json={"email": email, "password": PASSWORD},
                headers={"DPoP": proof("POST", f"{gateway}/auth/login")},
            )
            assert login.status_code == 200, login.text
            assert login.json()["token_type"] == "DPoP"
            access = login.json()["access_token"]
            dpop = {"Authorization": f"DPoP {access}"}
            url = f"{gateway}/orders/42"
            ok = await client.get(
                "/orders/42?page=2", headers={**dpop, "DPoP": proof("GET", url, access)}
            )
            assert ok.status_code == 200, ok.text
            assert ok.json()["session_id"] == login.json()["session"]["id"]
            for headers in (
                _bearer(access),  # the token without its proof, as a thief would send it
                dpop,
                {**dpop, "DPoP": proof("POST", url, access)},  # made for another request
                {**dpop, "DPoP": proof("GET", f"{gateway}/orders/43", access)},
            ):
                denied = await client.get("/orders/42", headers=headers)
                assert denied.status_code == 401, denied.text
                assert denied.headers["x-auth-error"] == "invalid_dpop_proof"
                assert denied.headers["www-authenticate"].startswith("DPoP ")
                assert "upstream" not in denied.text


async def test_nginx_expired_token_and_cookie_mode_client(
    postgres_url: str, tmp_path: Path
) -> None:
    email = await _user(postgres_url)
    env = {"ACCESS_TOKEN_TTL": "5", "JWT_LEEWAY": "0"}
    with gateway_stack(postgres_url, tmp_path, env) as gateway:
        async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
            # A browser in cookie mode: the refresh token stays in its cookie, the access
            # token (held in memory by auth-client.js) goes to APIs as a Bearer header.
            login = await client.post(
                "/auth/login",
                json={"email": email, "password": PASSWORD},
                headers={"Session-Transport": "cookie"},
            )
            assert login.status_code == 200
            assert login.json()["refresh_token"] is None
            assert "__Secure-refresh_token" in login.headers.get("set-cookie", "")
            access = login.json()["access_token"]
            ok = await client.get("/orders/1", headers=_bearer(access))
            assert ok.status_code == 200
            # The same session's token as the service signed it 5.1 s earlier: just past its
            # exp (5 s TTL, no leeway), without waiting for this one to get there.
            lapsed = await _signed_earlier(postgres_url, access, seconds=5.1)
            expired = await client.get("/orders/1", headers=_bearer(lapsed))
            assert expired.status_code == 401
            assert expired.headers["x-auth-error"] == "token_expired"


async def test_nginx_passes_verify_rate_limit_through_per_client(
    postgres_url: str, tmp_path: Path
) -> None:
    """A 429 from /auth/verify reaches the client as a 429 with Retry-After (nginx's
    auth_request would answer 500), and the limit counts each client, not the gateway."""
    email = await _user(postgres_url)
    env = {
        "RATE_LIMITS_ENABLED": "true",
        "RATE_LIMIT_VERIFY_IP": "3/hour",
        "TRUSTED_PROXIES": '["127.0.0.1"]',
    }
    with gateway_stack(postgres_url, tmp_path, env) as gateway:
        async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
            login = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
            token = login.json()["access_token"]
            # The test client sits on the trusted gateway's own address, so the
            # X-Forwarded-For it sends stands for two different clients behind it.
            first = {**_bearer(token), "X-Forwarded-For": "198.51.100.7"}
            statuses = [
                (await client.get("/orders/1", headers=first)).status_code for _ in range(3)
            ]
            assert statuses == [200, 200, 200]
            limited = await client.get("/orders/1", headers=first)
            assert limited.status_code == 429, limited.text
            assert int(limited.headers["retry-after"]) >= 1
            assert limited.json()["error"]["code"] == "rate_limited"
            assert "upstream" not in limited.text
            other = {**_bearer(token), "X-Forwarded-For": "198.51.100.8"}
            assert (await client.get("/orders/1", headers=other)).status_code == 200


async def test_nginx_passes_an_outage_through_as_503(pg_cluster: PgCluster, tmp_path: Path) -> None:
    """With the database down, /auth/verify answers 503: the client gets 503 with Retry-After
    (nginx's auth_request would answer 500), and 200 again once the database is back."""
    await asyncio.to_thread(migrate.upgrade, pg_cluster.url)
    email = await _user(pg_cluster.url)
    env = {"DB_POOL_TIMEOUT": "1"}
    with gateway_stack(pg_cluster.url, tmp_path, env) as gateway:
        async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
            login = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
            headers = _bearer(login.json()["access_token"])
            assert (await client.get("/orders/1", headers=headers)).status_code == 200
            await asyncio.to_thread(pg_cluster.stop)
            # Twice: the pooled connection dies under the first, the second is refused.
            for _ in range(2):
                down = await client.get("/orders/1", headers=headers)
                assert down.status_code == 503, down.text
                assert int(down.headers["retry-after"]) >= 1
                assert down.json()["error"]["code"] == "service_unavailable"
            await asyncio.to_thread(pg_cluster.start)
            assert (await client.get("/orders/1", headers=headers)).status_code == 200


async def test_nginx_refuses_beyond_its_in_flight_limit_as_authsvc_would(
    postgres_url: str, tmp_path: Path
) -> None:
    """The recipe's in-flight limit on /auth/: one request held open inside it (its headers
    read, its body not yet sent) takes the only slot; the next is refused by nginx itself with
    authsvc's own 503 overloaded envelope and Retry-After, never reaching authsvc; once the
    held one finishes, requests pass again."""
    email = await _user(postgres_url)
    with gateway_stack(postgres_url, tmp_path, limit=1) as gateway:
        host, port = gateway.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = json.dumps({"email": email, "password": PASSWORD}).encode()
        head = (
            f"POST /auth/login HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode())
        await writer.drain()
        try:
            async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
                login = {"email": email, "password": PASSWORD}

                async def refused() -> httpx.Response | None:
                    response = await client.post(
                        "/auth/login", json=login, headers={"X-Request-ID": "held-1"}
                    )
                    return response if response.status_code == 503 else None

                response = None
                deadline = time.monotonic() + 5
                while response is None:  # until nginx has read the held request's headers
                    assert time.monotonic() < deadline, "nginx never counted the held request"
                    response = await refused()
                assert response.headers["retry-after"] == "1"
                assert response.headers["content-type"].startswith("application/json")
                assert response.json()["error"]["code"] == "overloaded"
                assert response.headers["x-request-id"] == "held-1"  # echoed as authsvc does
                evil = await client.post(
                    "/auth/login", json=login, headers={"X-Request-ID": "a b<script>"}
                )
                assert evil.status_code == 503
                assert "x-request-id" not in evil.headers

                writer.write(body)
                await writer.drain()
                status_line = await asyncio.wait_for(reader.readline(), 10)
                assert status_line.startswith(b"HTTP/1.1 200"), status_line
                writer.close()
                await writer.wait_closed()

                after = await client.post("/auth/login", json=login)
                assert after.status_code == 200, after.text
            assert await _sessions_of(postgres_url, email) == 2  # the refused one never arrived
        finally:
            if not writer.is_closing():
                writer.close()


async def _sessions_of(database_url: str, email: str) -> int:
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.email = $1",
            email,
        )
    finally:
        await conn.close()
    return count
