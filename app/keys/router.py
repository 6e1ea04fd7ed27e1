"""Public key discovery for gateways and resource servers (RFC 7517, RFC 8414 metadata)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.dependencies import ContextDep

router = APIRouter(tags=["keys"])


@router.get("/.well-known/jwks.json")
async def jwks(ctx: ContextDep) -> JSONResponse:
    """Public keys that verify our access tokens: pending (about to sign), active, and retiring
    (still verifying tokens they signed). Public material only."""
    return JSONResponse(
        ctx.key_ring.jwks(),
        headers={"Cache-Control": f"public, max-age={ctx.settings.jwks_max_age}"},
    )


@router.get("/.well-known/openid-configuration")
async def discovery(ctx: ContextDep) -> dict[str, Any]:
    """Issuer metadata, so off-the-shelf gateways find the keys from the issuer alone."""
    issuer = ctx.settings.issuer.rstrip("/")
    return {
        "issuer": ctx.settings.issuer,
        "jwks_uri": f"{issuer}/.well-known/jwks.json",
        "token_endpoint": f"{issuer}/auth/token",
        "introspection_endpoint": f"{issuer}/auth/introspect",
        "grant_types_supported": ["password", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic"],
        "id_token_signing_alg_values_supported": [ctx.key_ring.signer.algorithm],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
    }
