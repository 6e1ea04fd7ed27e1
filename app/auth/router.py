"""HTTP layer for authentication: parse, call the service, shape the response."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request, Response, status

from app.auth.dependencies import (
    CookieGuard,
    CurrentSession,
    current_session_or_none,
    guard_cookie_request,
)
from app.auth.errors import NotAuthenticated, OAuthError, RefreshTokenInvalid
from app.auth.refresh_service import RefreshService
from app.auth.schemas import (
    LoginRequest,
    MeResponse,
    OAuthTokenResponse,
    RefreshRequest,
    SessionInfo,
    SessionStatusResponse,
    SessionStatusSession,
    TokenResponse,
    TokenStatus,
)
from app.auth.service import AuthService, TokenGrant
from app.auth.transport import (
    clear_session_cookies,
    csrf_header,
    refresh_cookie,
    set_session_cookies,
    wants_cookies,
)
from app.context import AppContext
from app.core.errors import UnauthorizedError
from app.core.json_body import openapi_body, parse_json_body
from app.core.text import has_control_characters
from app.dependencies import ClientDep, ContextDep, DbSession, get_client_info, get_context
from app.users.service import normalize_email

router = APIRouter(prefix="/auth", tags=["auth"])

_401 = {"description": "Not authenticated: see `error.code`"}
_403 = {"description": "`csrf_failed`: cross-site request refused (cookie transport)"}


async def _limit_login(ctx: AppContext, ip: str | None, email: str) -> None:
    await ctx.limiter.hit("login_ip", ip or "unknown")
    await ctx.limiter.hit("login_account", normalize_email(email))


def _refresh_after(issued_at: datetime, expires_at: datetime) -> datetime:
    # Refresh once four fifths of the token's life have passed: early enough to absorb
    # a slow network, late enough not to rotate needlessly.
    return expires_at - (expires_at - issued_at) / 5


def _token_response(grant: TokenGrant) -> TokenResponse:
    return TokenResponse(
        access_token=grant.access.token,
        expires_in=grant.access.expires_in,
        refresh_token=grant.refresh_token,
        refresh_expires_in=grant.refresh_expires_in,
        refresh_after=_refresh_after(grant.now, grant.access.expires_at),
        session=SessionInfo(
            id=grant.session.id,
            idle_expires_at=grant.session.idle_expires_at,
            absolute_expires_at=grant.session.absolute_expires_at,
        ),
    )


_COOKIE_DOC = (
    " With `Session-Transport: cookie` the refresh token travels only in an HttpOnly cookie "
    "(the body's `refresh_token` is null) and a CSRF cookie is set: see docs/browser-mode.md."
)


def _respond(grant: TokenGrant, ctx: AppContext, *, cookies: bool) -> Response:
    """The token pair as a ready JSON response, the refresh token in a cookie if asked. A
    returned Response goes out as it is: FastAPI neither validates nor serialises it again."""
    body = _token_response(grant)
    response = Response(media_type="application/json")
    if cookies:
        csrf_token = ctx.csrf_codec.token_for(grant.session.id)
        set_session_cookies(
            response,
            refresh_token=grant.refresh_token,
            csrf_token=csrf_token,
            # Until the absolute deadline, not the idle one: a browser that kept the cookie
            # past an idle expiry lets the server say why (session_expired) on the next refresh.
            max_age=_seconds_until(grant.session.absolute_expires_at, grant.now),
        )
        body.refresh_token = None
        body.csrf_token = csrf_token
    response.body = body.model_dump_json().encode()
    response.headers["content-length"] = str(len(response.body))
    return response


@router.post(
    "/login",
    responses={401: _401, 403: _403},
    description=_COOKIE_DOC,
    dependencies=[CookieGuard],
    response_model=TokenResponse,
)
async def login(
    body: LoginRequest,
    request: Request,
    ctx: ContextDep,
    uow: DbSession,
    client: ClientDep,
) -> Response:
    """Start a new session (one per device) and return its first token pair."""
    cookies = wants_cookies(request)
    await _limit_login(ctx, client.ip, body.email)
    grant = await AuthService(ctx, uow, client).login(body.email, body.password, body.device_name)
    return _respond(grant, ctx, cookies=cookies)


@router.post(
    "/refresh",
    responses={401: _401, 403: _403, 422: {"description": "`validation_error`"}},
    description=_COOKIE_DOC,
    response_model=TokenResponse,
    openapi_extra=openapi_body(RefreshRequest),
)
async def refresh(request: Request) -> Response:
    """Rotate a refresh token. Retrying the same token within the reuse interval returns the
    same successor; replaying it later is treated as theft and revokes the session."""
    await guard_cookie_request(request)
    body = await parse_json_body(request, RefreshRequest)
    ctx, client = await get_context(request), await get_client_info(request)
    await ctx.limiter.hit("refresh_ip", client.ip or "unknown")
    service = RefreshService(ctx, client)
    if body.refresh_token is not None:
        grant = await service.refresh(body.refresh_token)
        return _respond(grant, ctx, cookies=wants_cookies(request))
    token = refresh_cookie(request)
    if token is None:
        raise RefreshTokenInvalid("No refresh token in the body or in the cookie.")
    grant = await service.refresh(token, csrf_token=csrf_header(request))
    # A token that came from a cookie goes back only into a cookie, never into the body.
    return _respond(grant, ctx, cookies=True)


@router.post(
    "/token",
    responses={400: {"description": "RFC 6749 §5.2 error"}},
    summary="OAuth 2.0 token endpoint (password and refresh_token grants)",
)
async def token(
    ctx: ContextDep,
    uow: DbSession,
    client: ClientDep,
    grant_type: Annotated[str | None, Form()] = None,
    username: Annotated[str | None, Form(max_length=320)] = None,
    password: Annotated[str | None, Form(max_length=1024)] = None,
    refresh_token: Annotated[str | None, Form(max_length=512)] = None,
    scope: Annotated[str | None, Form(max_length=1024)] = None,
) -> OAuthTokenResponse:
    """RFC 6749 token endpoint, form-encoded. This is what the /docs "Authorize" button calls."""
    service = AuthService(ctx, uow, client)
    try:
        if grant_type == "password":
            if not username or not password:
                raise OAuthError("invalid_request", "username and password are required")
            if has_control_characters(username):
                raise OAuthError("invalid_request", "username must not contain control characters")
            await _limit_login(ctx, client.ip, username)  # same limits as /auth/login
            grant = await service.login(username, password, device_name="openapi-docs")
        elif grant_type == "refresh_token":
            if not refresh_token:
                raise OAuthError("invalid_request", "refresh_token is required")
            await ctx.limiter.hit("refresh_ip", client.ip or "unknown")
            grant = await RefreshService(ctx, client).refresh(refresh_token)
        elif grant_type is None:
            raise OAuthError("invalid_request", "grant_type is required")
        else:
            raise OAuthError(
                "unsupported_grant_type", "grant_type must be password or refresh_token"
            )
    except UnauthorizedError as exc:
        raise OAuthError("invalid_grant", exc.detail, persist=exc.persist) from exc
    return OAuthTokenResponse(
        access_token=grant.access.token,
        expires_in=grant.access.expires_in,
        refresh_token=grant.refresh_token,
    )


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={401: _401, 403: _403},
    dependencies=[CookieGuard],
)
async def logout(request: Request, ctx: ContextDep, uow: DbSession, client: ClientDep) -> Response:
    """Revoke this session: its refresh token and every access token stop working at once.

    Authenticated by the Bearer access token, or in cookie transport by the refresh cookie and
    the CSRF token. Cookie transport also clears the cookies and sends Clear-Site-Data."""
    service = AuthService(ctx, uow, client)
    cookies = wants_cookies(request)
    auth = current_session_or_none(request)
    if auth is not None:
        await service.logout(auth.session.id, auth.session.user_id)
    else:
        token = refresh_cookie(request)
        if token is None:
            raise NotAuthenticated()
        await service.logout_with_refresh_token(token, csrf_header(request))
        cookies = True
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    if cookies:
        clear_session_cookies(response)
    return response


@router.post("/logout-all", status_code=status.HTTP_204_NO_CONTENT, responses={401: _401})
async def logout_all(
    auth: CurrentSession, ctx: ContextDep, uow: DbSession, client: ClientDep
) -> Response:
    """Revoke every session of the caller, on every device."""
    await AuthService(ctx, uow, client).logout_all(auth.session.user_id, auth.session.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/session-status", responses={401: _401})
async def session_status(auth: CurrentSession, ctx: ContextDep) -> SessionStatusResponse:
    """Where the session and token stand. Polling this does not count as activity."""
    now = ctx.clock.now()
    session, claims = auth.session, auth.claims
    return SessionStatusResponse(
        session=SessionStatusSession(
            id=session.id,
            user=session.email,
            created_at=session.created_at,
            idle_expires_at=session.idle_expires_at,
            absolute_expires_at=session.absolute_expires_at,
            idle_seconds_remaining=_seconds_until(session.idle_expires_at, now),
            absolute_seconds_remaining=_seconds_until(session.absolute_expires_at, now),
        ),
        token=TokenStatus(valid=True, expires_in=_seconds_until(claims.expires_at, now)),
        server_time=now,
        refresh_after=_refresh_after(claims.issued_at, claims.expires_at),
        message="Session and token are valid",
        success=True,
    )


@router.get("/me", responses={401: _401})
async def me(auth: CurrentSession) -> MeResponse:
    """The caller's account. An ordinary protected route: it counts as activity."""
    session = auth.session
    return MeResponse(
        id=session.user_id, email=session.email, role=session.role, is_active=session.user_active
    )


def _seconds_until(moment: datetime, now: datetime) -> int:
    return max(0, int((moment - now).total_seconds()))
