"""HTTP layer for authentication: parse, call the service, answer through the transport."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Request, Response, status

from app.auth.client_credentials import ServiceToken, client_credentials
from app.auth.dependencies import (
    AuthServiceDep,
    ClientCredentialsDep,
    CookieGuard,
    CurrentSession,
    DPoPDep,
    TransportsDep,
    current_session_or_none,
    guard_cookie_request,
    oauth2_scheme,
    proved_key,
    refuse_service_caller,
)
from app.auth.devices import DeviceProof
from app.auth.errors import (
    EmailNotVerified,
    InvalidCredentials,
    MfaChallengeInvalid,
    MfaCodeRefused,
    NotAuthenticated,
    OAuthError,
)
from app.auth.grants import refresh_after, seconds_until
from app.auth.schemas import (
    MAX_PRESENTED_REFRESH_TOKEN,
    LoginRequest,
    MeResponse,
    OAuthTokenResponse,
    RefreshRequest,
    SessionStatusResponse,
    SessionStatusSession,
    TokenResponse,
    TokenStatus,
)
from app.auth.service import AuthService, LoginRefused, MfaChallenge
from app.auth.tokens import IssuedAccessToken
from app.auth.transport import Transports
from app.core.components import components_of
from app.core.dependencies import (
    ClientDep,
    ClockDep,
    DbSession,
    LimiterDep,
    SettingsDep,
    get_client_info,
)
from app.core.error_handlers import domain_error_response
from app.core.errors import DomainError, UnauthorizedError
from app.core.exposure import passive, public
from app.core.json_body import openapi_body, parse_json_body
from app.core.ratelimit import RateLimiter
from app.core.text import has_control_characters
from app.dpop.errors import InvalidDPoPProof, UseDPoPNonce
from app.dpop.service import DPoP
from app.mfa.schemas import (
    CeremonyResponse,
    ChallengeRequest,
    LoginMfaRequest,
    MfaChallengeResponse,
    PasskeyLoginRequest,
)
from app.sessions.errors import RefreshTokenInvalid
from app.users.service import normalize_email

router = APIRouter(prefix="/auth", tags=["auth"])

_400_DPOP = {
    "description": "`invalid_dpop_proof`: the DPoP proof is missing (a bound session, or "
    "DPOP_REQUIRED) or fails a check; `use_dpop_nonce`: retry with the `DPoP-Nonce` header's "
    "nonce in the proof"
}
_401 = {"description": "Not authenticated: see `error.code`"}
_403 = {"description": "`csrf_failed`: cross-site request refused (cookie transport)"}
_COOKIE_DOC = (
    " With `Session-Transport: cookie` the refresh token travels only in an HttpOnly cookie "
    "(the body's `refresh_token` is null) and a CSRF cookie is set: see docs/browser-mode.md."
)
_DPOP_DOC = (
    " A `DPoP` proof header (RFC 9449) binds the session to the proof's key: the access token "
    "carries `cnf.jkt`, `token_type` is `DPoP`, and every later refresh needs a proof by the "
    "same key (docs/dpop.md)."
)


async def _limit_login(
    limiter: RateLimiter, ip: str | None, email: str, device: DeviceProof | None = None
) -> None:
    """Per IP, and per account; a device token for the account is counted per device
    instead, so that flooding an account's logins does not shut out its owner's devices."""
    await limiter.hit("login_ip", ip or "unknown")
    if device is not None:
        await limiter.hit("login_device", device.device_id)
    else:
        await limiter.hit("login_account", normalize_email(email))


@router.post(
    "/login",
    responses={
        400: _400_DPOP,
        401: _401,
        403: {
            "description": "`csrf_failed` (cookie transport); `email_not_verified`: the right "
            "password, but REQUIRE_VERIFIED_EMAIL and an unproven address (a fresh link was sent)"
        },
        202: {
            "description": "The account has a second factor: no tokens, a `challenge` to answer "
            "at POST /auth/login/mfa (docs/mfa.md)",
            "model": MfaChallengeResponse,
        },
    },
    description=_COOKIE_DOC + _DPOP_DOC,
    dependencies=[CookieGuard],
    response_model=TokenResponse,
)
@public
async def login(
    body: LoginRequest,
    request: Request,
    service: AuthServiceDep,
    transports: TransportsDep,
    limiter: LimiterDep,
    uow: DbSession,
    client: ClientDep,
    dpop: DPoPDep,
) -> Response:
    """Start a new session (one per device) and return its first token pair."""
    transport = transports.for_response(request)
    device_token = transports.presented_device_token(request, body.device_token)
    device = service.device_proof(device_token, body.email)
    await _limit_login(limiter, client.ip, body.email, device)
    jkt = await proved_key(request, dpop)
    result = await service.login(
        uow, client, body.email, body.password, body.device_name, device, dpop_jkt=jkt
    )
    if isinstance(result, LoginRefused):
        # Returned, not raised: the failure's records commit with the unit of work.
        return domain_error_response(_refusal(result))
    if isinstance(result, MfaChallenge):
        return _challenge_response(result)
    return _with_nonce(transport.token_response(result), dpop)


def _challenge_response(challenge: MfaChallenge) -> Response:
    body = MfaChallengeResponse(
        challenge=challenge.token,
        methods=list(challenge.methods),
        expires_in=challenge.expires_in,
    )
    return Response(
        body.model_dump_json(),
        status_code=status.HTTP_202_ACCEPTED,
        media_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


@router.post(
    "/login/mfa",
    responses={
        400: _400_DPOP,
        401: {
            "description": "`invalid_mfa_code`: the code is wrong or used; "
            "`mfa_challenge_invalid`: the challenge is unknown, used, expired, ended by too "
            "many wrong codes, or its account changed (log in again)"
        },
        403: _403,
        422: {"description": "`validation_error`: not exactly one of code and recovery_code"},
        409: {"description": "`mfa_unavailable`: the factor's secret does not open here"},
        429: {
            "description": "`rate_limited`: RATE_LIMIT_LOGIN_MFA_ACCOUNT; `mfa_locked`: too many "
            "wrong codes in a row, no code is checked until Retry-After"
        },
    },
    description="The second step of a two-step login (docs/mfa.md). Answers as POST "
    "/auth/login does on success, in the same transport; a request of the first step with a "
    "DPoP proof must send a proof by the same key here." + _COOKIE_DOC,
    dependencies=[CookieGuard],
    response_model=TokenResponse,
)
@public
async def login_mfa(
    body: LoginMfaRequest,
    request: Request,
    service: AuthServiceDep,
    transports: TransportsDep,
    limiter: LimiterDep,
    uow: DbSession,
    client: ClientDep,
    dpop: DPoPDep,
) -> Response:
    """Answer a login's challenge with a second factor: a TOTP code or a recovery code."""
    transport = transports.for_response(request)
    await limiter.hit("login_ip", client.ip or "unknown")
    jkt = await proved_key(request, dpop)
    result = await service.login_mfa(uow, client, body.challenge, body.proof(), dpop_jkt=jkt)
    if isinstance(result, LoginRefused):
        # Returned, not raised: the failure's records (and lockout count) commit.
        if result.reason == "wrong_code":
            return domain_error_response(MfaCodeRefused())
        return domain_error_response(MfaChallengeInvalid())
    return _with_nonce(transport.token_response(result), dpop)


def _refusal(refused: LoginRefused) -> DomainError:
    """Every refusal looks the same (no oracle), but for an unproven address behind the right
    password, which only its owner can act on."""
    if refused.reason == "email_not_verified":
        return EmailNotVerified()
    return InvalidCredentials()


@router.post(
    "/login/mfa/passkey-options",
    response_model=CeremonyResponse,
    responses={401: {"description": "`mfa_challenge_invalid`: log in again"}},
)
@public
async def login_mfa_passkey_options(
    body: ChallengeRequest,
    service: AuthServiceDep,
    limiter: LimiterDep,
    uow: DbSession,
    client: ClientDep,
) -> CeremonyResponse | Response:
    """Options for answering a login's challenge with a passkey (its `methods` name
    "passkey"): an assertion by one of the account's passkeys, for
    navigator.credentials.get(). Answer POST /auth/login/mfa with `passkey`."""
    await limiter.hit("login_ip", client.ip or "unknown")
    ceremony = await service.passkey_options_for_challenge(uow, body.challenge)
    if isinstance(ceremony, LoginRefused):
        return domain_error_response(MfaChallengeInvalid())
    return CeremonyResponse(ceremony=ceremony.handle, options=ceremony.options)


@router.post("/passkeys/login/options", response_model=CeremonyResponse)
@public
async def passkey_login_options(
    service: AuthServiceDep, limiter: LimiterDep, uow: DbSession, client: ClientDep
) -> CeremonyResponse:
    """Options for a passwordless login with a passkey: any discoverable passkey of this
    service, user verification required, for navigator.credentials.get()."""
    await limiter.hit("login_ip", client.ip or "unknown")
    ceremony = await service.passkey_login_options(uow)
    return CeremonyResponse(ceremony=ceremony.handle, options=ceremony.options)


@router.post(
    "/passkeys/login",
    responses={
        400: _400_DPOP,
        401: {
            "description": "`invalid_credentials`: the passkey's answer does not check out "
            "(unknown passkey, signature, origin, RP ID, no user verification, a signature "
            "counter that did not grow: a cloned authenticator), or its account is deactivated"
        },
        403: {
            "description": "`csrf_failed` (cookie transport); `email_not_verified`: "
            "REQUIRE_VERIFIED_EMAIL and an unproven address (a fresh link was sent)"
        },
    },
    description="A passwordless login: the answer of navigator.credentials.get() to the "
    "options of POST /auth/passkeys/login/options. Answers as POST /auth/login does, in the "
    "same transport; the session's amr is the passkey's (hwk or swk), user and mfa."
    + _COOKIE_DOC
    + _DPOP_DOC,
    dependencies=[CookieGuard],
    response_model=TokenResponse,
)
@public
async def passkey_login(
    body: PasskeyLoginRequest,
    request: Request,
    service: AuthServiceDep,
    transports: TransportsDep,
    limiter: LimiterDep,
    uow: DbSession,
    client: ClientDep,
    dpop: DPoPDep,
) -> Response:
    """Log in with a passkey alone."""
    transport = transports.for_response(request)
    await limiter.hit("login_ip", client.ip or "unknown")
    jkt = await proved_key(request, dpop)
    result = await service.login_passkey(uow, client, body.proof(), body.device_name, dpop_jkt=jkt)
    if isinstance(result, LoginRefused):
        return domain_error_response(_refusal(result))
    return _with_nonce(transport.token_response(result), dpop)


@router.post(
    "/refresh",
    responses={400: _400_DPOP, 401: _401, 403: _403, 422: {"description": "`validation_error`"}},
    description=_COOKIE_DOC + _DPOP_DOC,
    response_model=TokenResponse,
    openapi_extra=openapi_body(RefreshRequest),
)
@public
async def refresh(request: Request) -> Response:
    """Rotate a refresh token. Retrying the same token within the reuse interval returns the
    same successor; replaying it later is treated as theft and revokes the session."""
    # Hot route: it reads its own body and components (no dependency solving), and needs no
    # request unit of work (the rotation is one store call).
    components = components_of(request.app)
    transports = components.get(Transports)
    await guard_cookie_request(request, transports)
    body = await parse_json_body(request, RefreshRequest)
    client = await get_client_info(request)
    await components.get(RateLimiter).hit("refresh_ip", client.ip or "unknown")
    presented = transports.presented_refresh_token(request, body.refresh_token)
    if presented is None:
        raise RefreshTokenInvalid("No refresh token in the body or in the cookie.")
    dpop = components.get(DPoP)
    jkt = await proved_key(request, dpop)
    grant = await components.get(AuthService).refresh(presented.token, client, presented.guard, jkt)
    return _with_nonce(presented.transport.token_response(grant), dpop)


@router.post(
    "/token",
    responses={
        400: {"description": "RFC 6749 §5.2 error"},
        401: {"description": "RFC 6749 §5.2 `invalid_client` (client_credentials)"},
    },
    summary="OAuth 2.0 token endpoint (password, refresh_token and client_credentials grants)",
    response_model=OAuthTokenResponse,
    response_model_exclude_none=True,
)
@public
async def token(
    request: Request,
    service: AuthServiceDep,
    service_clients: ClientCredentialsDep,
    limiter: LimiterDep,
    uow: DbSession,
    client: ClientDep,
    dpop: DPoPDep,
    grant_type: Annotated[str | None, Form()] = None,
    username: Annotated[str | None, Form(max_length=320)] = None,
    password: Annotated[str | None, Form(max_length=1024)] = None,
    refresh_token: Annotated[str | None, Form(max_length=MAX_PRESENTED_REFRESH_TOKEN)] = None,
    scope: Annotated[str | None, Form(max_length=1024)] = None,
    client_id: Annotated[str | None, Form(max_length=256)] = None,
    client_secret: Annotated[str | None, Form(max_length=256)] = None,
    audience: Annotated[str | None, Form(max_length=1024)] = None,
) -> Response:
    """RFC 6749 token endpoint, form-encoded. This is what the /docs "Authorize" button calls.

    `client_credentials` (§4.4) is for registered service clients (`python -m app clients`),
    authenticated by HTTP Basic or `client_id` + `client_secret` in the form: a short-lived
    access token with no refresh token; `scope` and `audience` (space-separated) may ask for
    what the client is registered with. A `DPoP` proof header binds the tokens (and the
    session) to its key, as on /auth/login; its errors are `invalid_dpop_proof` and
    `use_dpop_nonce` (RFC 9449 §5, §8)."""
    try:
        # Each grant counts the request against its limits before the DPoP proof is checked
        # (a signature and a replay-cache write), as /auth/login does; a request for nothing
        # is refused before either.
        if grant_type == "client_credentials":
            presented = client_credentials(
                request.headers.get("authorization"), client_id, client_secret
            )
            await limiter.hit("client_token_ip", client.ip or "unknown")
            # DPOP_REQUIRED is about sessions: a service client's token has none.
            jkt = await proved_key(request, dpop, for_session=False)
            issued = await service_clients.issue(
                uow, client, presented, scope=scope, audience=audience, dpop_jkt=jkt
            )
            if not isinstance(issued, ServiceToken):
                return domain_error_response(issued)  # returned: its audit row commits
            response = _oauth_response(issued.access, issued.token_type, issued.scope)
            return _with_nonce(response, dpop)
        if grant_type == "password":
            if not username or not password:
                raise OAuthError("invalid_request", "username and password are required")
            if has_control_characters(username):
                raise OAuthError("invalid_request", "username must not contain control characters")
            await _limit_login(limiter, client.ip, username)  # same limits as /auth/login
            jkt = await proved_key(request, dpop)
            result = await service.login(
                uow, client, username, password, "openapi-docs", dpop_jkt=jkt
            )
            if isinstance(result, LoginRefused):
                # Returned, not raised: the failure's records commit with the unit of work.
                refused = OAuthError("invalid_grant", _refusal(result).detail)
                return domain_error_response(refused)
            if isinstance(result, MfaChallenge):
                # The password grant has no second step: its challenge is left to expire.
                mfa = OAuthError(
                    "invalid_grant",
                    "mfa_required: this account has a second factor; log in with POST "
                    "/auth/login and /auth/login/mfa",
                )
                return domain_error_response(mfa)
            grant = result
        elif grant_type == "refresh_token":
            if not refresh_token:
                raise OAuthError("invalid_request", "refresh_token is required")
            await limiter.hit("refresh_ip", client.ip or "unknown")
            jkt = await proved_key(request, dpop)
            grant = await service.refresh(refresh_token, client, dpop_jkt=jkt)
        elif grant_type is None:
            raise OAuthError("invalid_request", "grant_type is required")
        else:
            raise OAuthError(
                "unsupported_grant_type",
                "grant_type must be password, refresh_token or client_credentials",
            )
    except UnauthorizedError as exc:
        raise OAuthError("invalid_grant", exc.detail) from exc
    except (InvalidDPoPProof, UseDPoPNonce) as exc:
        # RFC 9449 §5, §8: the token endpoint's own error shape, the nonce in its header.
        raise OAuthError(exc.code, exc.detail, headers=exc.headers()) from exc
    response = _oauth_response(grant.access, grant.token_type, None, grant.refresh_token)
    return _with_nonce(response, dpop)


def _oauth_response(
    access: IssuedAccessToken,
    token_type: Literal["Bearer", "DPoP"],
    scope: str | None,
    refresh_token: str | None = None,
) -> Response:
    body = OAuthTokenResponse(
        access_token=access.token,
        token_type=token_type,
        expires_in=access.expires_in,
        refresh_token=refresh_token,
        scope=scope,
    )
    return Response(
        body.model_dump_json(exclude_none=True),
        media_type="application/json",
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def _with_nonce(response: Response, dpop: DPoP) -> Response:
    """Hand the client the current DPoP nonce with every token response (RFC 9449 §8.2), so
    its next proof carries it without a round trip to be told."""
    nonce = dpop.fresh_nonce()
    if nonce is not None:
        response.headers["DPoP-Nonce"] = nonce
    return response


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={401: _401, 403: _403},
    # The bearer scheme declared (auto_error=False: it checks nothing) so that /docs sends the
    # Authorize token; the cookie transport's refresh cookie and CSRF token still work.
    dependencies=[CookieGuard, Depends(oauth2_scheme)],
)
async def logout(
    request: Request,
    service: AuthServiceDep,
    transports: TransportsDep,
    uow: DbSession,
    client: ClientDep,
    dpop: DPoPDep,
) -> Response:
    """Revoke this session: its refresh token and every access token stop working at once.

    Authenticated by the Bearer access token, or in cookie transport by the refresh cookie and
    the CSRF token. Cookie transport also expires the cookies (and sends Clear-Site-Data only
    when LOGOUT_CLEAR_SITE_DATA is on)."""
    refuse_service_caller(request)  # a service has no session to end
    auth = current_session_or_none(request)
    if auth is not None:
        await service.logout(uow, client, auth.session.id, auth.session.user_id)
        return transports.for_response(request).logout_response()
    presented = transports.presented_refresh_token(request)
    if presented is None or presented.guard is None:
        raise NotAuthenticated()
    # A bound session is ended by its key's holder only: a copied cookie jar is worth
    # nothing, not even a logout (any session may be ended with a proof, DPOP_REQUIRED or not).
    jkt = await proved_key(request, dpop, for_session=False)
    await service.logout_with_refresh_token(uow, client, presented.token, presented.guard, jkt)
    return presented.transport.logout_response()


@router.post("/logout-all", status_code=status.HTTP_204_NO_CONTENT, responses={401: _401})
async def logout_all(
    auth: CurrentSession, service: AuthServiceDep, uow: DbSession, client: ClientDep
) -> Response:
    """Revoke every session of the caller, on every device."""
    await service.logout_all(uow, client, auth.session.user_id, auth.session.id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/session-status", responses={401: _401})
@passive
async def session_status(
    auth: CurrentSession, clock: ClockDep, settings: SettingsDep
) -> SessionStatusResponse:
    """Where the session and token stand, and how the user proved who they are (`amr`, `acr`,
    `auth_time`; docs/mfa.md). Polling this does not count as activity."""
    now = clock.now()
    session, claims = auth.session, auth.claims
    fresh_for = timedelta(seconds=settings.step_up_ttl)
    return SessionStatusResponse(
        session=SessionStatusSession(
            id=session.id,
            user=session.email,
            created_at=session.created_at,
            idle_expires_at=session.idle_expires_at,
            absolute_expires_at=session.absolute_expires_at,
            idle_seconds_remaining=seconds_until(session.idle_expires_at, now),
            absolute_seconds_remaining=seconds_until(session.absolute_expires_at, now),
            amr=session.methods,
            acr=session.acr(now, fresh_for),
            auth_time=session.authenticated_at,
            factor_at=session.factor_at,
            acr_expires_at=(
                session.factor_fresh_until(fresh_for)
                if session.has_recent_factor(now, fresh_for)
                else None
            ),
        ),
        token=TokenStatus(valid=True, expires_in=seconds_until(claims.expires_at, now)),
        server_time=now,
        refresh_after=refresh_after(claims.issued_at, claims.expires_at, session.idle_expires_at),
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
