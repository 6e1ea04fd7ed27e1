"""DPoP from login to the downstream service (issue 18), end to end: the real auth service, the
notes service (examples/notes, on authsvc-kit) and nginx with the shipped recipe in front of
both. A token bound at /auth/login (through nginx, with a proof) works on the notes service with
a proof of its key and is refused without one; with live checks on, the kit forwards the proof
to /auth/verify, which checks it against the original request. A bound browser socket through
the recipe's /notes/ws (which the service sees as /ws) works once nginx sends
X-Forwarded-Prefix and the service trusts it (docs/downstream.md#dpop)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import jwt
import pytest
from authsvc_kit import AuthMiddleware, Kit
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from websockets.asyncio.client import connect

from tests.conftest import PASSWORD
from tests.downstream.conftest import notes_service, service_config
from tests.downstream.dpop_keys import ProofKey, dpop_headers
from tests.downstream.wsclient import next_message, until_closed
from tests.gateway.test_nginx import run_nginx
from tests.support.servers import (
    AUDIENCE,
    create_user_in,
    free_port,
    started_together,
    uvicorn_server,
)

pytestmark = pytest.mark.slow
# The WebSocket client's own logger above DEBUG: at DEBUG it logs what it sends.
_QUIET = logging.getLogger("tests.downstream.test_kit_dpop_e2e.ws")
_QUIET.setLevel(logging.INFO)
REFUSED = 'DPoP error="invalid_dpop_proof", algs="ES256 ES384 EdDSA RS256 PS256"'


@pytest.fixture(scope="module")
def stack(sqlite_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The auth service (its own issuer) and the notes service, then nginx before both;
    yields (gateway, auth service)."""
    port = free_port()
    auth = f"http://127.0.0.1:{port}"
    with (
        started_together(
            uvicorn_server(sqlite_url, env={"JWT_ISSUER": auth}, port=port),
            notes_service(auth, audience=AUDIENCE),
        ) as started,
    ):
        notes = cast(str, started[1])
        with run_nginx(
            tmp_path_factory.mktemp("nginx"), auth=auth, upstream=notes, notes=notes
        ) as gateway:
            yield gateway, auth


async def _whoami(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.scope["authsvc.principal"].user_id})


async def _bound_login(base: str, database_url: str, key: ProofKey) -> dict[str, Any]:
    email = await create_user_in(database_url, prefix="dpop")
    async with httpx.AsyncClient(timeout=10) as client:
        login = await client.post(
            f"{base}/auth/login",
            json={"email": email, "password": PASSWORD},
            headers={"DPoP": key.proof("POST", f"{base}/auth/login")},
        )
    assert login.status_code == 200, login.text
    tokens: dict[str, Any] = login.json()
    assert tokens["token_type"] == "DPoP"
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["cnf"] == {"jkt": key.jkt}
    return tokens


async def test_a_bound_login_through_nginx_works_on_notes_only_with_its_proof(
    sqlite_url: str, stack: tuple[str, str]
) -> None:
    gateway, _ = stack
    key = ProofKey.new()
    tokens = await _bound_login(gateway, sqlite_url, key)
    token = tokens["access_token"]
    url = f"{gateway}/notes"
    async with httpx.AsyncClient(timeout=10) as client:
        proof = key.proof("GET", url, token)
        listed = await client.get(url, headers=dpop_headers(token, proof))
        replayed = await client.get(url, headers=dpop_headers(token, proof))
        created = await client.post(
            url, json={"text": "bound"}, headers=dpop_headers(token, key.proof("POST", url, token))
        )
        stranger = ProofKey.new().proof("GET", url, token)
        refusals = [
            await client.get(url, headers=dpop_headers(token, None)),
            await client.get(url, headers={"Authorization": f"Bearer {token}"}),
            await client.get(url, headers=dpop_headers(token, stranger)),
        ]
    assert listed.status_code == 200, listed.text
    claims = jwt.decode(token, options={"verify_signature": False})
    assert listed.json()["identity"]["session_id"] == claims["sid"]
    assert created.status_code == 201, created.text
    for refused in (replayed, *refusals):
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "invalid_dpop_proof"
        assert refused.headers["www-authenticate"] == REFUSED


async def test_live_checks_forward_the_proof_of_a_bound_token(
    sqlite_url: str, stack: tuple[str, str]
) -> None:
    """/auth/verify refuses a bound token without its proof: the kit's live check sends the
    client's proof and the request it was made for (X-Forwarded-*), and still hears a logout."""
    _, auth = stack
    key = ProofKey.new()
    tokens = await _bound_login(auth, sqlite_url, key)
    token = tokens["access_token"]

    kit = Kit(service_config(auth, live_check=True, live_check_ttl=0.0))
    app = AuthMiddleware(Starlette(routes=[Route("/whoami", _whoami)]), kit, required=True)
    transport = httpx.ASGITransport(app=app)
    url = "https://notes.example/whoami"
    async with kit.lifespan(), httpx.AsyncClient(transport=transport, base_url=url) as client:
        ok = await client.get(url, headers=dpop_headers(token, key.proof("GET", url, token)))
        async with httpx.AsyncClient(timeout=10) as direct:
            logout_url = f"{auth}/auth/logout"
            out = await direct.post(
                logout_url, headers=dpop_headers(token, key.proof("POST", logout_url, token))
            )
        after = await client.get(url, headers=dpop_headers(token, key.proof("GET", url, token)))
    assert ok.status_code == 200, ok.text
    assert out.status_code == 204, out.text
    assert after.status_code == 401, after.text
    assert after.json()["error"]["code"] == "session_revoked"
    assert kit.live is not None
    assert kit.live.calls == 2


async def test_a_live_check_passes_the_auth_services_nonce_request_on(sqlite_url: str) -> None:
    """DPOP_NONCE_REQUIRED at the auth service: the kit's live check answers the client 401
    use_dpop_nonce with the nonce (not cached), and the retry with it is accepted."""
    port = free_port()
    auth = f"http://127.0.0.1:{port}"
    env = {"JWT_ISSUER": auth, "DPOP_NONCE_REQUIRED": "true"}
    key = ProofKey.new()
    with uvicorn_server(sqlite_url, env=env, port=port):
        email = await create_user_in(sqlite_url, prefix="dpop")
        login_url = f"{auth}/auth/login"
        async with httpx.AsyncClient(timeout=10) as direct:
            body = {"email": email, "password": PASSWORD}
            first = await direct.post(
                login_url, json=body, headers={"DPoP": key.proof("POST", login_url)}
            )
            nonce = first.headers["dpop-nonce"]
            login = await direct.post(
                login_url, json=body, headers={"DPoP": key.proof("POST", login_url, nonce=nonce)}
            )
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]

        kit = Kit(service_config(auth, live_check=True, live_check_ttl=5.0))
        app = AuthMiddleware(Starlette(routes=[Route("/whoami", _whoami)]), kit, required=True)
        url = "https://notes.example/whoami"
        transport = httpx.ASGITransport(app=app)
        async with kit.lifespan(), httpx.AsyncClient(transport=transport) as client:
            asked = await client.get(url, headers=dpop_headers(token, key.proof("GET", url, token)))
            nonce = asked.headers.get("dpop-nonce", "")
            retried = await client.get(
                url, headers=dpop_headers(token, key.proof("GET", url, token, nonce=nonce))
            )
    assert asked.status_code == 401, asked.text
    assert asked.json()["error"]["code"] == "use_dpop_nonce"
    assert asked.headers["www-authenticate"].startswith('DPoP error="use_dpop_nonce", algs=')
    assert nonce
    assert retried.status_code == 200, retried.text


async def test_a_bound_socket_through_nginx_with_the_prefix_forwarded(
    sqlite_url: str, tmp_path: Path
) -> None:
    port = free_port()
    auth = f"http://127.0.0.1:{port}"
    trusting = {"AUTHSVC_TRUSTED_PROXIES": "127.0.0.1"}
    key = ProofKey.new()
    with started_together(
        uvicorn_server(sqlite_url, env={"JWT_ISSUER": auth}, port=port),
        notes_service(auth, audience=AUDIENCE, env=trusting),
    ) as started:
        notes = cast(str, started[1])
        with run_nginx(tmp_path, auth=auth, upstream=notes, notes=notes) as gateway:
            token = (await _bound_login(gateway, sqlite_url, key))["access_token"]
            address = gateway.replace("http://", "ws://") + "/notes/ws"
            socket = await connect(address, open_timeout=5, logger=_QUIET)
            proof = key.proof("GET", address, token)
            await socket.send(json.dumps({"type": "authenticate", "token": token, "proof": proof}))
            hello = await next_message(socket)
            await socket.close()
            # The same through the service's own address: the proof names the public one.
            direct = await connect(notes.replace("http://", "ws://") + "/ws", logger=_QUIET)
            proof = key.proof("GET", address, token)
            await direct.send(json.dumps({"type": "authenticate", "token": token, "proof": proof}))
            closed = await until_closed(direct, within=5)
    assert hello["type"] == "hello"
    assert (closed.code, closed.reason) == (4400, "invalid_dpop_proof")
