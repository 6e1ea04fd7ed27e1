"""Review of issue 18 (DPoP): forward-auth reads X-Original-* before X-Forwarded-*.

Traefik's ForwardAuth (the configuration in docs/gateway.md, no `authRequestHeaders`) sends its
own X-Forwarded-Method/-Proto/-Host/-Uri and copies every client header, X-Original-* included.
app/dpop/dependencies.py:original_request prefers X-Original-Method/-URL, so the client picks
the method and URL its proof is checked against: a proof minted for another request (another
server, another method) lets a stolen bound token through the gateway for any request."""

from __future__ import annotations

from tests.conftest import Harness
from tests.dpop.test_routes import bound_login, dpop_challenge

# What Traefik sends for the real request: DELETE https://api.example/admin/users/7
TRAEFIK = {
    "X-Forwarded-Method": "DELETE",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "api.example",
    "X-Forwarded-Uri": "/admin/users/7",
}


async def test_client_sent_x_original_url_does_not_override_the_gateways_forwarded_request(
    harness: Harness,
) -> None:
    client, tokens = await bound_login(harness)
    access = tokens["access_token"]
    # A proof the attacker holds for another request: GET on another resource server.
    elsewhere = client.proof("GET", "https://other-rs.example/notes", token=access)
    spoofed = {
        **TRAEFIK,
        # Sent by the client; Traefik passes them through untouched.
        "X-Original-Method": "GET",
        "X-Original-URL": "https://other-rs.example/notes",
    }
    response = await harness.client.get(
        "/auth/verify",
        headers={"Authorization": f"DPoP {access}", "DPoP": elsewhere, **spoofed},
    )
    dpop_challenge(response, "invalid_dpop_proof")


async def test_client_sent_x_original_method_does_not_override_the_forwarded_method(
    harness: Harness,
) -> None:
    client, tokens = await bound_login(harness)
    access = tokens["access_token"]
    # A GET proof for the right URL, used to authorise a DELETE.
    get_proof = client.proof("GET", "https://api.example/admin/users/7", token=access)
    response = await harness.client.get(
        "/auth/verify",
        headers={
            "Authorization": f"DPoP {access}",
            "DPoP": get_proof,
            **TRAEFIK,
            "X-Original-Method": "GET",
        },
    )
    dpop_challenge(response, "invalid_dpop_proof")
