"""Gateway integration: forward-auth (nginx auth_request, Traefik, Envoy) and RFC 7662."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Response
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from app.auth.dependencies import CurrentCaller
from app.auth.middleware import ServiceCaller
from app.core.dependencies import ClientDep, DbSession
from app.core.error_handlers import domain_error_response
from app.core.exposure import limited, public
from app.gateway.dependencies import IntrospectionDep
from app.gateway.errors import IntrospectionClientUnauthorized
from app.gateway.schemas import IntrospectionResponse, VerifyResponse

router = APIRouter(prefix="/auth", tags=["gateway"])
# Every answer of these comes from the token check, CORS preflights included.
FORWARD_AUTH_PATHS = frozenset({"/auth/verify"})
# Named and described for the /docs Authorize dialog, which lists every scheme: these are a
# gateway's introspection credentials, not a user's login (users take the OAuth2 password flow).
basic = HTTPBasic(
    auto_error=False,
    scheme_name="IntrospectionClient",
    description="Gateways only: an introspection client's id and secret (INTROSPECTION_CLIENTS)"
    " for POST /auth/introspect. Not a user login: users authorize with OAuth2PasswordBearer.",
)

# Gateways forward the client's method to forward-auth (Traefik's ForwardAuth, nginx's
# auth_request): every method gets the same answer. One route per method, so each operation
# gets its own operationId (client generators refuse a repeated one).
_OTHER_METHODS = ["HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_VERIFY_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "no or bad token; the code is in `X-Auth-Error`"},
    429: {"description": "`rate_limited`, with Retry-After"},
}


@router.get("/verify", responses=_VERIFY_RESPONSES, response_model_exclude_none=True)
@limited("verify_ip")  # every request, bad tokens included, before the token check
async def verify(auth: CurrentCaller, response: Response) -> VerifyResponse:
    """Forward-auth, for any HTTP method: 200 with the identity in `X-Auth-User-Id`,
    `X-Auth-Session-Id` and `X-Auth-Role` for a gateway to pass upstream; 401 otherwise; 429
    `rate_limited` (never a 401) when one client IP overdoes it, counting every request.
    Counts as user activity. A service client's token (client_credentials) gets 200 with
    `X-Auth-Client-Id` (and `X-Auth-Scope`) instead, never a user or session header; 401
    `client_disabled` once its client is disabled."""
    if isinstance(auth, ServiceCaller):
        claims = auth.claims
        response.headers["X-Auth-Client-Id"] = claims.client_id
        if claims.scope:
            response.headers["X-Auth-Scope"] = claims.scope
        return VerifyResponse(
            sub=f"client:{claims.client_id}", client_id=claims.client_id, scope=claims.scope
        )
    response.headers["X-Auth-User-Id"] = str(auth.session.user_id)
    response.headers["X-Auth-Session-Id"] = str(auth.session.id)
    response.headers["X-Auth-Role"] = auth.session.role
    return VerifyResponse(
        sub=str(auth.session.user_id), sid=auth.session.id, role=auth.session.role
    )


for _method in _OTHER_METHODS:
    router.add_api_route(
        "/verify",
        verify,
        methods=[_method],
        responses=_VERIFY_RESPONSES,
        response_model=VerifyResponse,
        response_model_exclude_none=True,
    )


@router.post(
    "/introspect",
    response_model=IntrospectionResponse,
    response_model_exclude_none=True,
    responses={
        401: {"description": "`invalid_client`: missing or wrong Basic credentials"},
        429: {"description": "`rate_limited`: too many failed client authentications"},
    },
)
@public
async def introspect(
    introspection: IntrospectionDep,
    uow: DbSession,
    client: ClientDep,
    credentials: Annotated[HTTPBasicCredentials | None, Depends(basic)],
    token: Annotated[str, Form(max_length=4096)],
    token_type_hint: Annotated[str | None, Form(max_length=32)] = None,
) -> IntrospectionResponse | Response:
    """RFC 7662 token introspection for access and refresh tokens. Failed client
    authentications are limited per IP (`RATE_LIMIT_INTROSPECT_FAILURES`) and audited."""
    presented = (credentials.username, credentials.password) if credentials else None
    client_id = await introspection.authenticate_client(uow, client, presented)
    if client_id is None:
        # Returned, not raised: the failure's audit row commits with the unit of work.
        return domain_error_response(IntrospectionClientUnauthorized())
    result = await introspection.introspect(token, token_type_hint)
    if result.active and result.client_id is None:  # a service token names its own client
        result.client_id = client_id
    return result
