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


@router.get("/.well-known/openid-configuration")
@public
async def discovery(keys: KeySetDep, settings: SettingsDep) -> dict[str, Any]:
    """Issuer metadata, so off-the-shelf gateways find the keys from the issuer alone."""
    issuer = settings.issuer.rstrip("/")
    return {
        "issuer": settings.issuer,
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "token_endpoint": f"{issuer}/auth/token",
        "introspection_endpoint": f"{issuer}/auth/introspect",
        "grant_types_supported": ["password", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
        "id_token_signing_alg_values_supported": [keys.ring.signer.algorithm],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
    }
