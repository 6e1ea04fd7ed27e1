from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from app.auth.errors import NotAuthenticated
from app.auth.middleware import AUTH_STATE_KEY, Authenticated, bearer_token
from app.auth.service import AuthService
from app.auth.transport import Transports
from app.core.components import provider

# Only for the OpenAPI document (the /docs "Authorize" button); the middleware verifies.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)

AuthServiceDep = Annotated[AuthService, Depends(provider(AuthService))]
TransportsDep = Annotated[Transports, Depends(provider(Transports))]


def current_session_or_none(request: Request) -> Authenticated | None:
    """What the identity middleware verified for this request, if anything."""
    auth = request.scope.get("state", {}).get(AUTH_STATE_KEY)
    return auth if isinstance(auth, Authenticated) else None


async def get_current_session(
    request: Request, _token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Authenticated:
    auth = current_session_or_none(request)
    if auth is None:
        raise NotAuthenticated()
    return auth


CurrentSession = Annotated[Authenticated, Depends(get_current_session)]


async def guard_cookie_request(request: Request, transports: TransportsDep) -> None:
    """Cross-site checks for every request that uses, or may be authenticated by, cookies.

    A dependency so that it runs before the body is parsed: a foreign `text/plain` post gets
    403 `csrf_failed`, not a validation error. The session-bound CSRF token is checked later,
    once the refresh cookie has named the session."""
    transports.check_cross_site(request, has_bearer_token=bearer_token(request.scope) is not None)


CookieGuard = Depends(guard_cookie_request)
