"""Gateway mode proven with real nginx (auth_request) in front of a tiny upstream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from app.auth.tokens import AccessTokenCodec
from app.core import migrate
from app.core.clock import Clock
from app.core.db import create_engine
from app.keys.service import KeySet, load_key_ring
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


def _render(conf: str, *, listen: int, auth: str, upstream: str, notes: str | None) -> str:
    rendered = (
        conf.replace("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{listen};")
        .replace("server 127.0.0.1:8000;", f"server {auth.removeprefix('http://')};")
        .replace("server 127.0.0.1:9000;", f"server {upstream.removeprefix('http://')};")
    )
    if notes is not None:
        rendered = rendered.replace(
            "server 127.0.0.1:9100;", f"server {notes.removeprefix('http://')};"
        )
    return rendered


def _main_conf(prefix: Path, include: Path) -> str:
    return f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {include};
}}
"""


@contextlib.contextmanager
def run_nginx(
    tmp_path: Path, *, auth: str, upstream: str, notes: str | None = None
) -> Iterator[str]:
    """Real nginx with the shipped config, pointed at `auth`, `upstream` and (when given) the
    notes service; yields its URL."""
    _require_nginx()
    listen = free_port()
    site = tmp_path / "authsvc.conf"
    shipped = (ROOT / "deploy/nginx/authsvc.conf").read_text()
    site.write_text(_render(shipped, listen=listen, auth=auth, upstream=upstream, notes=notes))
    conf = tmp_path / "nginx.conf"
    conf.write_text(_main_conf(tmp_path, site))
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
    database_url: str, tmp_path: Path, env: dict[str, str] | None = None
) -> Iterator[str]:
    """nginx, authsvc and the upstream, all on loopback; yields the gateway URL."""
    _require_nginx()
    upstream_app = "tests.support.upstream:app"
    with (
        started_together(
            uvicorn_server(database_url, env=env),
            uvicorn_server(database_url, factory=upstream_app, is_factory=False),
        ) as [(auth, _), (upstream, _)],
        run_nginx(tmp_path, auth=auth, upstream=upstream) as gateway,
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
