from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from app.auth.client_credentials import ClientCredentialsGrant
from app.auth.errors import NotAuthenticated, UserTokenRequired
from app.auth.middleware import AUTH_STATE_KEY, Authenticated, ServiceCaller, presented_token
from app.auth.service import AuthService
from app.auth.transport import Transports
from app.core.components import provider
from app.dpop.dependencies import proof_headers, request_url
from app.dpop.service import DPoP

# Only for the OpenAPI document (the /docs "Authorize" button); the middleware verifies.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)

AuthServiceDep = Annotated[AuthService, Depends(provider(AuthService))]
TransportsDep = Annotated[Transports, Depends(provider(Transports))]
ClientCredentialsDep = Annotated[ClientCredentialsGrant, Depends(provider(ClientCredentialsGrant))]
DPoPDep = Annotated[DPoP, Depends(provider(DPoP))]


async def proved_key(request: Request, dpop: DPoP, *, for_session: bool = True) -> str | None:
    """For a request that obtains tokens: the DPoP key its proof binds them to (RFC 9449 §5),
    None without a proof; InvalidDPoPProof or UseDPoPNonce for a proof that does not hold."""
    return await dpop.key_to_bind(
        proof_headers(request.scope),
        method=request.method,
        url=request_url(request.scope, dpop.origins),
        for_session=for_session,
    )


def current_session_or_none(request: Request) -> Authenticated | None:
    """What the identity gate verified for this request, if anything."""
    auth = request.scope.get("state", {}).get(AUTH_STATE_KEY)
    return auth if isinstance(auth, Authenticated) else None


def refuse_service_caller(request: Request) -> None:
    """A service client's token where a user's is needed: 403 user_token_required (not 401:
    the token is good, only not for this route, and a new one would be no better)."""
    if isinstance(request.scope.get("state", {}).get(AUTH_STATE_KEY), ServiceCaller):
        raise UserTokenRequired()


async def get_current_session(
    request: Request, _token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Authenticated:
    auth = current_session_or_none(request)
    if auth is None:
        refuse_service_caller(request)
        raise NotAuthenticated()
    return auth


# A user with a live session: every route that acts for a user. Service tokens get 403.
CurrentSession = Annotated[Authenticated, Depends(get_current_session)]


async def get_current_caller(
    request: Request, _token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Authenticated | ServiceCaller:
    auth = request.scope.get("state", {}).get(AUTH_STATE_KEY)
    if not isinstance(auth, Authenticated | ServiceCaller):
        raise NotAuthenticated()
    return auth


# A user or a service client: only for routes that accept services (/auth/verify).
CurrentCaller = Annotated[Authenticated | ServiceCaller, Depends(get_current_caller)]


async def guard_cookie_request(request: Request, transports: TransportsDep) -> None:
    """Cross-site checks for every request that uses, or may be authenticated by, cookies.

    A dependency so that it runs before the body is parsed: a foreign `text/plain` post gets
    403 `csrf_failed`, not a validation error. The session-bound CSRF token is checked later,
    once the refresh cookie has named the session."""
    has_token = presented_token(request.scope) is not None
    transports.check_cross_site(request, has_bearer_token=has_token)


CookieGuard = Depends(guard_cookie_request)
