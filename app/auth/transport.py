"""Cookie transport for browsers: which requests use it, its cookies, and its CSRF checks.

HTTP concerns only; the CSRF token's binding to a session is checked by the service.
"""

from __future__ import annotations

from fastapi import Request, Response

from app.auth.errors import CsrfFailed

TRANSPORT_HEADER = "session-transport"
CSRF_HEADER = "x-csrf-token"
REFRESH_COOKIE = "__Secure-refresh_token"
CSRF_COOKIE = "__Host-csrf_token"
# The refresh cookie goes only where it is used. A cookie has one path, so the same token is
# set twice (browsers key cookies by name and path).
REFRESH_COOKIE_PATHS = ("/auth/refresh", "/auth/logout")


def wants_cookies(request: Request) -> bool:
    return request.headers.get(TRANSPORT_HEADER, "").strip().lower() == "cookie"


def refresh_cookie(request: Request) -> str | None:
    return request.cookies.get(REFRESH_COOKIE) or None


def csrf_header(request: Request) -> str:
    return request.headers.get(CSRF_HEADER, "")


def check_cross_site(request: Request, allowed_origins: list[str]) -> None:
    """Refuse what a foreign page could send with the user's cookies (OWASP CSRF cheat sheet):
    a foreign Origin, a cross-site fetch, or a body type that needs no CORS preflight."""
    origin = request.headers.get("origin")
    own_origin = f"{request.url.scheme}://{request.url.netloc}"
    if origin is not None and origin != own_origin and origin not in allowed_origins:
        raise CsrfFailed()
    if request.headers.get("sec-fetch-site") == "cross-site" and origin not in allowed_origins:
        raise CsrfFailed()
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        raise CsrfFailed()


def set_session_cookies(
    response: Response, *, refresh_token: str, csrf_token: str, max_age: int
) -> None:
    for path in REFRESH_COOKIE_PATHS:
        response.set_cookie(
            REFRESH_COOKIE,
            refresh_token,
            max_age=max_age,
            path=path,
            secure=True,
            httponly=True,
            samesite="strict",
        )
    response.set_cookie(
        CSRF_COOKIE,
        csrf_token,
        max_age=max_age,
        path="/",
        secure=True,
        httponly=False,  # the page's script reads it to echo it in X-CSRF-Token
        samesite="strict",
    )


def clear_session_cookies(response: Response) -> None:
    """Expire the cookies with the attributes they were set with, or browsers keep them."""
    for path in REFRESH_COOKIE_PATHS:
        response.delete_cookie(
            REFRESH_COOKIE, path=path, secure=True, httponly=True, samesite="strict"
        )
    response.delete_cookie(CSRF_COOKIE, path="/", secure=True, httponly=False, samesite="strict")
    response.headers["Clear-Site-Data"] = '"cookies"'
