"""Review of issue 18 (DPoP): proofs that make the service answer 500 instead of 400/401.

Each needs no account: the token endpoint checks the proof before anything else. Every proof
here is signed by the sender's own key where a signature is needed (anyone can make one)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from joserfc.jwk import ECKey

from tests.conftest import Harness, make_settings, start_harness
from tests.dpop.test_routes import Client, bound_login, dpop_challenge

FORM = {"grant_type": "password", "username": "nobody@example.com", "password": "x"}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def _token_endpoint(h: Harness, proof: str) -> httpx.Response:
    # raise_app_exceptions would turn the 500 into an exception: look at what a client gets.
    transport = httpx.ASGITransport(app=h.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        return await c.post("/auth/token", data=FORM, headers={"DPoP": proof})


async def test_a_deeply_nested_proof_header_is_a_400_not_a_500(harness: Harness) -> None:
    # json.loads raises RecursionError (not ValueError) past ~1000 levels; 1400 fit in 4 kB.
    header = _b64(('{"a":' + "[" * 1400 + "]" * 1400 + "}").encode())
    response = await _token_endpoint(harness, f"{header}.e30.AAAA")
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_dpop_proof"


async def test_a_signed_proof_with_an_unparseable_htu_is_a_400_not_a_500(
    harness: Harness,
) -> None:
    # urlsplit raises ValueError("Invalid IPv6 URL"), uncaught in proof._check_claims.
    proof = Client(harness).proof("POST", "/auth/token", htu="http://[")
    response = await _token_endpoint(harness, proof)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_dpop_proof"


async def test_a_deeply_nested_header_on_a_protected_route_is_a_401(harness: Harness) -> None:
    _, tokens = await bound_login(harness)
    access = tokens["access_token"]
    header = _b64(('{"a":' + "[" * 1400 + "]" * 1400 + "}").encode())
    transport = httpx.ASGITransport(app=harness.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        response = await c.get(
            "/auth/me",
            headers={"Authorization": f"DPoP {access}", "DPoP": f"{header}.e30.AAAA"},
        )
    dpop_challenge(response, "invalid_dpop_proof")


@pytest.fixture
async def nonce_harness(database_url: str) -> AsyncIterator[Harness]:
    async for h in start_harness(make_settings(database_url, dpop_nonce_required=True)):
        yield h


async def test_a_non_ascii_nonce_is_use_dpop_nonce_not_a_500(nonce_harness: Harness) -> None:
    # hmac.compare_digest raises TypeError for a str with non-ASCII characters.
    client = Client(nonce_harness, ECKey.generate_key("P-256"))
    client.nonce = "\u00e9"
    response = await _token_endpoint(nonce_harness, client.proof("POST", "/auth/token"))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "use_dpop_nonce"
    assert json.loads(response.text)["error_description"]
