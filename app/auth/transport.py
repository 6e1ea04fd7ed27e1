"""How tokens travel, and everything HTTP about it: the bearer transport (JSON bodies and the
Authorization header: API clients, the /docs explorer) and the cookie transport for browsers
(HttpOnly refresh cookie, session-bound CSRF token, Origin checks). The services never see a
cookie or a CSRF token: a token read from a cookie comes with a guard that checks the CSRF
token once the session is known (see sessions.service.SessionGuard).
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from typing import Protocol

from fastapi import Request, Response, status

from app.auth.errors import CsrfFailed
from app.auth.grants import TokenGrant, seconds_until
from app.auth.schemas import SessionInfo, TokenResponse
from app.core.security import b64url, derive_key
from app.sessions.service import SessionGuard
from app.sessions.tokens import RefreshTokenCodec

TRANSPORT_HEADER = "session-transport"
CSRF_HEADER = "x-csrf-token"
REFRESH_COOKIE = "__Secure-refresh_token"
CSRF_COOKIE = "__Host-csrf_token"
# The device token (app.auth.devices) of a browser: read only by logins, kept across logouts
# (it says the browser logged in before, not that a session is live).
DEVICE_COOKIE = "__Host-device_token"
# The refresh cookie goes only where it is used. A cookie has one path, so the same token is
# set twice (browsers key cookies by name and path).
REFRESH_COOKIE_PATHS = ("/auth/refresh", "/auth/logout")


class CsrfTokenCodec:
    """Signed double-submit CSRF tokens bound to a session: HMAC(csrf_key, session id)."""

    def __init__(self, secret: str) -> None:
        self._key = derive_key(secret, "csrf-token/v1")

    def token_for(self, session_id: uuid.UUID) -> str:
        return b64url(hmac.new(self._key, session_id.bytes, hashlib.sha256).digest())

    def matches(self, session_id: uuid.UUID, presented: str) -> bool:
        return hmac.compare_digest(self.token_for(session_id).encode(), presented.encode())


class Transport(Protocol):
    def token_response(self, grant: TokenGrant) -> Response: ...

    def logout_response(self) -> Response: ...


@dataclass(frozen=True, slots=True)
class PresentedRefreshToken:
    token: str
    guard: SessionGuard | None  # the CSRF check, for a token that came from a cookie
    transport: Transport  # how the answer goes back


def _token_body(grant: TokenGrant) -> TokenResponse:
    return TokenResponse(
        access_token=grant.access.token,
        token_type=grant.token_type,
        expires_in=grant.access.expires_in,
        refresh_token=grant.refresh_token,
        refresh_expires_in=grant.refresh_expires_in,
        refresh_after=grant.refresh_after,
        device_token=grant.device_token,
        session=SessionInfo(
            id=grant.session.id,
            idle_expires_at=grant.session.idle_expires_at,
            absolute_expires_at=grant.session.absolute_expires_at,
        ),
    )


def _json(response: Response, body: TokenResponse) -> Response:
    """A ready JSON response: FastAPI neither validates nor serialises it again."""
    response.body = body.model_dump_json().encode()
    response.headers["content-length"] = str(len(response.body))
    return response


class BearerTransport:
    def token_response(self, grant: TokenGrant) -> Response:
        return _json(Response(media_type="application/json"), _token_body(grant))

    def logout_response(self) -> Response:
        return Response(status_code=status.HTTP_204_NO_CONTENT)


class CookieTransport:
    def __init__(
        self, csrf: CsrfTokenCodec, *, device_max_age: int, clear_site_data: bool = False
    ) -> None:
        self._csrf = csrf
        self._device_max_age = device_max_age
        self._clear_site_data = clear_site_data

    def token_response(self, grant: TokenGrant) -> Response:
        """The refresh token only in HttpOnly cookies, never in the body."""
        response = Response(media_type="application/json")
        csrf_token = self._csrf.token_for(grant.session.id)
        body = _token_body(grant)
        body.refresh_token = None
        body.device_token = None
        body.csrf_token = csrf_token
        # Until the absolute deadline, not the idle one: a browser that kept the cookie past
        # an idle expiry lets the server say why (session_expired) on the next refresh.
        max_age = seconds_until(grant.session.absolute_expires_at, grant.now)
        for path in REFRESH_COOKIE_PATHS:
            response.set_cookie(
                REFRESH_COOKIE,
                grant.refresh_token,
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
        if grant.device_token is not None:
            response.set_cookie(
                DEVICE_COOKIE,
                grant.device_token,
                max_age=self._device_max_age,
                path="/",
                secure=True,
                httponly=True,
                samesite="strict",
            )
        return _json(response, body)

    def logout_response(self) -> Response:
        """Expire our cookies with the attributes they were set with, or browsers keep them.
        Clear-Site-Data only when configured: it clears the whole registrable domain's
        cookies, other applications' too."""
        response = Response(status_code=status.HTTP_204_NO_CONTENT)
        for path in REFRESH_COOKIE_PATHS:
            response.delete_cookie(
                REFRESH_COOKIE, path=path, secure=True, httponly=True, samesite="strict"
            )
        response.delete_cookie(
            CSRF_COOKIE, path="/", secure=True, httponly=False, samesite="strict"
        )
        if self._clear_site_data:
            response.headers["Clear-Site-Data"] = '"cookies"'
        return response

    def pick_refresh_cookie(self, request: Request) -> str | None:
        """The request's refresh cookie; of several, the one whose session the request's CSRF
        token names.

        A `__Secure-` cookie may carry a Domain, so a sibling subdomain can plant a second
        refresh cookie (its own session's, or garbage) beside ours; taking the last, as
        cookie parsers do, would break the victim's refresh and logout, or swap in the
        attacker's session. The CSRF token comes from the `__Host-` cookie, which no other
        host can set, so it tells which candidate is the user's. No match: `csrf_failed`."""
        candidates = _refresh_cookies(request)
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        presented = request.headers.get(CSRF_HEADER, "")
        # Every distinct candidate, however many were planted: the head limit (431) bounds
        # them to a few hundred HMACs, and a cap would let a planter push ours past it.
        for candidate in dict.fromkeys(candidates):
            session_id = RefreshTokenCodec.session_of(candidate)
            if session_id is not None and self._csrf.matches(session_id, presented):
                return candidate
        raise CsrfFailed()

    def guard(self, request: Request) -> SessionGuard:
        """The check that the request's CSRF token is the session's, run once a refresh
        cookie has named the session."""
        presented = request.headers.get(CSRF_HEADER, "")

        def check(session_id: uuid.UUID) -> None:
            if not self._csrf.matches(session_id, presented):
                raise CsrfFailed()

        return check


class Transports:
    """Which transport a request uses, and the cross-site checks for cookie requests."""

    def __init__(
        self,
        csrf: CsrfTokenCodec,
        *,
        allowed_origins: list[str],
        device_max_age: int,
        clear_site_data: bool = False,
    ) -> None:
        self.bearer = BearerTransport()
        self.cookie = CookieTransport(
            csrf, device_max_age=device_max_age, clear_site_data=clear_site_data
        )
        self._allowed_origins = allowed_origins

    def for_response(self, request: Request) -> Transport:
        """Cookie transport when the client asks for it (`Session-Transport: cookie`)."""
        return self.cookie if _wants_cookies(request) else self.bearer

    def presented_refresh_token(
        self, request: Request, body_token: str | None = None
    ) -> PresentedRefreshToken | None:
        """The refresh token of a refresh or cookie logout: from the body if there, else from
        the cookie (CSRF-guarded). A token from a cookie goes back only into a cookie."""
        if body_token is not None:
            return PresentedRefreshToken(body_token, None, self.for_response(request))
        cookie = self.cookie.pick_refresh_cookie(request)
        if cookie is None:
            return None
        return PresentedRefreshToken(cookie, self.cookie.guard(request), self.cookie)

    def presented_device_token(self, request: Request, body_token: str | None) -> str | None:
        """A login's device token: from the body (bearer clients), else the browser's cookie."""
        return body_token or request.cookies.get(DEVICE_COOKIE) or None

    def check_cross_site(self, request: Request, *, has_bearer_token: bool) -> None:
        """Refuse what a foreign page could send with the user's cookies (OWASP CSRF cheat
        sheet): a foreign Origin, a cross-site fetch, or a body type that needs no CORS
        preflight. Only for requests that use, or may be authenticated by, cookies."""
        uses_cookies = _wants_cookies(request) or (
            _refresh_cookie(request) is not None and not has_bearer_token
        )
        if not uses_cookies:
            return
        origin = request.headers.get("origin")
        own_origin = f"{request.url.scheme}://{request.url.netloc}"
        allowed = self._allowed_origins
        if origin is not None and origin != own_origin and origin not in allowed:
            raise CsrfFailed()
        if request.headers.get("sec-fetch-site") == "cross-site" and origin not in allowed:
            raise CsrfFailed()
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            raise CsrfFailed()


def _wants_cookies(request: Request) -> bool:
    return request.headers.get(TRANSPORT_HEADER, "").strip().lower() == "cookie"


def _refresh_cookie(request: Request) -> str | None:
    return request.cookies.get(REFRESH_COOKIE) or None


def _refresh_cookies(request: Request) -> list[str]:
    """Every refresh cookie the request carries, in order (a parsed cookie dict keeps one)."""
    found = []
    for header in request.headers.getlist("cookie"):
        for pair in header.split(";"):
            name, eq, value = pair.partition("=")
            if eq and name.strip() == REFRESH_COOKIE and value.strip():
                found.append(value.strip())
    return found
