from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from app.auth.errors import NotAuthenticated
from app.auth.transport import check_cross_site, refresh_cookie, wants_cookies
from app.sessions.middleware import AUTH_STATE_KEY, Authenticated, bearer_token

# Only for the OpenAPI document (the /docs "Authorize" button); the middleware verifies.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


def current_session_or_none(request: Request) -> Authenticated | None:
    """What the sliding-session middleware verified for this request, if anything."""
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


async def guard_cookie_request(request: Request) -> None:
    """Cross-site checks for every request that uses, or may be authenticated by, cookies.

    A dependency so that it runs before the body is parsed: a foreign `text/plain` post gets
    403 `csrf_failed`, not a validation error. The session-bound CSRF token is checked later,
    by the service, once the refresh cookie has named the session."""
    uses_cookies = wants_cookies(request) or (
        refresh_cookie(request) is not None and bearer_token(request.scope) is None
    )
    if uses_cookies:
        check_cross_site(request, request.app.state.ctx.settings.cors_origins)


CookieGuard = Depends(guard_cookie_request)
