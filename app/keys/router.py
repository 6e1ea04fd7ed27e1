"""Public key discovery for gateways and resource servers (RFC 7517, RFC 8414 metadata)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from app.core.components import provider
from app.core.dependencies import SettingsDep
from app.core.exposure import public
from app.keys.service import KeySet

router = APIRouter(tags=["keys"])
KeySetDep = Annotated[KeySet, Depends(provider(KeySet))]


@router.get("/.well-known/jwks.json")
@public
async def jwks(keys: KeySetDep, settings: SettingsDep) -> JSONResponse:
    """Public keys that verify our access tokens: pending (about to sign), active, and retiring
    (still verifying tokens they signed). Public material only."""
    return JSONResponse(
        keys.ring.jwks(),
        headers={"Cache-Control": f"public, max-age={settings.jwks_max_age}"},
    )


@router.get("/.well-known/oauth-authorization-server")
@public
async def authorization_server_metadata(settings: SettingsDep) -> dict[str, Any]:
    """RFC 8414 metadata: where the token, introspection and key endpoints are, and only what
    this service really does (no authorization endpoint, so no response types; no ID tokens)."""
    return server_metadata(settings.issuer, settings.dpop_algorithms)


@router.get("/.well-known/openid-configuration")
@public
async def discovery(settings: SettingsDep) -> dict[str, Any]:
    """The same metadata where OpenID-minded gateways look for the issuer's keys. This is no
    OpenID provider: nothing here claims ID tokens or an implicit flow."""
    return server_metadata(settings.issuer, settings.dpop_algorithms)


def server_metadata(issuer: str, dpop_algorithms: list[str]) -> dict[str, Any]:
    base = issuer.rstrip("/")
    return {
        "issuer": issuer,
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "token_endpoint": f"{base}/auth/token",
        "introspection_endpoint": f"{base}/auth/introspect",
        "grant_types_supported": ["password", "refresh_token", "client_credentials"],
        # "none" for the password and refresh grants (first-party clients); registered service
        # clients (client_credentials) authenticate with either secret method of RFC 6749 §2.3.1.
        "token_endpoint_auth_methods_supported": [
            "none",
            "client_secret_basic",
            "client_secret_post",
        ],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
        # RFC 8414 requires the member; with no authorization endpoint the true list is empty.
        "response_types_supported": [],
        # OpenID Connect Back-Channel Logout 1.0 §2.1: logout tokens are sent to the clients of
        # BACKCHANNEL_LOGOUT_CLIENTS, and carry `sid` (the access tokens' own).
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        # RFC 9449 §5.1: the token endpoint takes DPoP proofs signed with these.
        "dpop_signing_alg_values_supported": sorted(dpop_algorithms),
    }
