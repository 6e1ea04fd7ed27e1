"""Account self-service: your password and your device sessions."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.account.dependencies import AccountFactorsDep, AccountServiceDep, PasswordChangeSession
from app.account.factors import FactorRefused
from app.account.schemas import ChangePasswordRequest
from app.account.service import Actor, PasswordChangeRefused
from app.audit.service import record
from app.auth.dependencies import CurrentSession
from app.core.db import committed_unit
from app.core.dependencies import (
    ClientDep,
    ClockDep,
    DatabaseDep,
    DbSession,
    LimiterDep,
)
from app.core.error_handlers import domain_error_response
from app.core.errors import DomainError
from app.mfa.errors import InvalidFactorCode
from app.mfa.repository import StoredPasskey
from app.mfa.schemas import (
    CeremonyResponse,
    FactorProofRequest,
    MfaStatusResponse,
    PasskeyOptionsRequest,
    PasskeyOut,
    PasskeyProofBody,
    PasskeyRenameRequest,
    RecoveryCodesResponse,
    StepUpResponse,
    TotpBeginRequest,
    TotpConfirmRequest,
    TotpEnrolmentResponse,
)
from app.sessions.dependencies import SessionServiceDep
from app.sessions.errors import SessionRevoked
from app.sessions.schemas import DeviceSessionOut
from app.users.errors import WrongCurrentPassword

router = APIRouter(prefix="/auth", tags=["account"])
sessions_router = APIRouter(prefix="/auth/sessions", tags=["sessions"])


@router.post(
    "/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        401: {
            "description": "`session_revoked`: too many wrong current passwords ended it; "
            "`insufficient_authentication`: PASSWORD_CHANGE_REQUIRES_STEP_UP and no second "
            "factor proved within STEP_UP_TTL (POST /auth/step-up first)"
        },
        403: {"description": "`invalid_current_password`"},
        422: {"description": "`invalid_password`; `password_unchanged`: the current one again"},
        429: {
            "description": "`rate_limited`: RATE_LIMIT_PASSWORD_CHANGE per session, or the "
            "session's other password changes are still being checked (Retry-After)"
        },
    },
)
async def change_password(
    body: ChangePasswordRequest,
    auth: PasswordChangeSession,
    accounts: AccountServiceDep,
    limiter: LimiterDep,
    database: DatabaseDep,
    uow: DbSession,
    client: ClientDep,
) -> Response:
    """Change your password; every other session is revoked (this one stays).

    A wrong current password counts toward the account's lockout like a failed login, and
    after PASSWORD_CHANGE_MAX_FAILURES of them this session is revoked."""
    # Before the hash: every attempt costs an argon2 run on the shared pool.
    await limiter.hit("password_change", str(auth.session.id))
    actor = Actor(client, session_id=auth.session.id)
    user_id = auth.session.user_id
    passwords = {"current_password": body.current_password, "new_password": body.new_password}
    await accounts.check_password_change(user_id, **passwords)
    async with committed_unit(database.engine) as claim:
        await accounts.reserve_password_check(claim, actor, user_id)
    refused = await accounts.change_password(uow, actor, user_id, **passwords)
    if refused is not None:
        # Returned, not raised: the failure's records commit with the unit of work.
        return domain_error_response(_password_refusal(refused))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _password_refusal(refused: PasswordChangeRefused) -> DomainError:
    if refused.session_ended:
        return SessionRevoked("Too many wrong current passwords: this session has been ended.")
    return WrongCurrentPassword()


@sessions_router.get("")
async def list_sessions(
    auth: CurrentSession, sessions: SessionServiceDep, uow: DbSession
) -> list[DeviceSessionOut]:
    """Your live sessions, newest first; `current` marks the one making this request."""
    devices = await sessions.list_devices(uow, auth.session.user_id)
    return [DeviceSessionOut.of(d, auth.session.id) for d in devices]


@sessions_router.delete(
    "/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "`session_not_found`: not a live session of yours"}},
)
async def revoke_session(
    session_id: uuid.UUID,
    auth: CurrentSession,
    sessions: SessionServiceDep,
    clock: ClockDep,
    uow: DbSession,
    client: ClientDep,
) -> Response:
    """End one of your sessions: its refresh token and access tokens stop working at once."""
    now = clock.now()
    await sessions.revoke_own(uow, auth.session.user_id, session_id, now=now)
    await record(
        await uow.connection(),
        "session.revoked",
        now=now,
        client=client,
        user_id=auth.session.user_id,
        session_id=session_id,
        by="user",
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- second factors (docs/mfa.md) ------------------------------------------------------------

mfa_router = APIRouter(prefix="/auth", tags=["second factors"])

_FACTOR_REFUSED = {
    "description": "`invalid_mfa_code`: the code is wrong or used (counted toward the "
    "account's lockout)"
}
_NO_FACTOR = {
    "description": "`mfa_not_enabled`: the account has no second factor; `mfa_unavailable`: its "
    "secret does not open with this server's key (an operator resets it)"
}
_STEP_UP_LIMIT = {
    "description": "`rate_limited`: RATE_LIMIT_STEP_UP_SESSION; `mfa_locked`: too many wrong "
    "codes in a row, no code is checked until Retry-After"
}


@mfa_router.get("/mfa")
async def mfa_status(
    auth: CurrentSession, factors: AccountFactorsDep, uow: DbSession
) -> MfaStatusResponse:
    """Your second factors: whether an authenticator app is on, and recovery codes left."""
    status_ = await factors.status(uow, auth.session)
    return MfaStatusResponse(
        totp=status_.totp,
        totp_pending=status_.totp_pending,
        recovery_codes_left=status_.recovery_codes_left,
        passkeys=status_.passkeys,
    )


@mfa_router.post(
    "/mfa/totp",
    status_code=status.HTTP_201_CREATED,
    response_model=TotpEnrolmentResponse,
    responses={
        403: {"description": "`invalid_current_password` (counted toward the lockout)"},
        409: {"description": "`totp_already_enabled`: turn the current one off first"},
        429: _STEP_UP_LIMIT,
    },
)
async def begin_totp(
    body: TotpBeginRequest,
    auth: CurrentSession,
    factors: AccountFactorsDep,
    uow: DbSession,
    client: ClientDep,
) -> TotpEnrolmentResponse | Response:
    """Start enrolling an authenticator app, with the account's password: its secret, shown
    this once, as text, as an otpauth:// URI and as a QR code. Nothing changes at login until a
    first code confirms it (POST /auth/mfa/totp/confirm)."""
    enrolment = await factors.begin_totp(uow, client, auth.session, body.password)
    if isinstance(enrolment, FactorRefused):
        return domain_error_response(WrongCurrentPassword())
    return TotpEnrolmentResponse(
        secret=enrolment.secret, otpauth_uri=enrolment.uri, qr_svg=enrolment.qr_svg
    )


@mfa_router.post(
    "/mfa/totp/confirm",
    response_model=RecoveryCodesResponse,
    responses={
        400: _FACTOR_REFUSED,
        409: {"description": "`totp_not_enrolling`: no enrolment to confirm"},
        429: _STEP_UP_LIMIT,
    },
)
async def confirm_totp(
    body: TotpConfirmRequest,
    auth: CurrentSession,
    factors: AccountFactorsDep,
    uow: DbSession,
    client: ClientDep,
) -> RecoveryCodesResponse | Response:
    """Confirm the enrolment with the app's current code: logins now take two steps, and
    this answer holds the account's ten recovery codes (shown this once). The owner is told by
    email; this session's acr is not raised (a step-up does that)."""
    codes = await factors.confirm_totp(uow, client, auth.session, body.code)
    if isinstance(codes, FactorRefused):
        return domain_error_response(InvalidFactorCode())
    return RecoveryCodesResponse(recovery_codes=codes)


@mfa_router.post(
    "/mfa/disable",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={400: _FACTOR_REFUSED, 409: _NO_FACTOR, 429: _STEP_UP_LIMIT},
)
async def disable_mfa(
    body: FactorProofRequest,
    auth: CurrentSession,
    factors: AccountFactorsDep,
    uow: DbSession,
    client: ClientDep,
) -> Response:
    """Turn the second factor off (the app and the recovery codes); needs one of them, now."""
    refused = await factors.disable(uow, client, auth.session, body.proof())
    if refused is not None:
        return domain_error_response(InvalidFactorCode())
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@mfa_router.post(
    "/mfa/recovery-codes",
    response_model=RecoveryCodesResponse,
    responses={400: _FACTOR_REFUSED, 409: _NO_FACTOR, 429: _STEP_UP_LIMIT},
)
async def regenerate_recovery_codes(
    body: FactorProofRequest,
    auth: CurrentSession,
    factors: AccountFactorsDep,
    uow: DbSession,
    client: ClientDep,
) -> RecoveryCodesResponse | Response:
    """Ten new recovery codes in place of the old ones (shown this once); needs a factor."""
    codes = await factors.regenerate_recovery_codes(uow, client, auth.session, body.proof())
    if isinstance(codes, FactorRefused):
        return domain_error_response(InvalidFactorCode())
    return RecoveryCodesResponse(recovery_codes=codes)


@mfa_router.post(
    "/step-up",
    response_model=StepUpResponse,
    responses={400: _FACTOR_REFUSED, 409: _NO_FACTOR, 429: _STEP_UP_LIMIT},
)
async def step_up(
    body: FactorProofRequest,
    auth: CurrentSession,
    factors: AccountFactorsDep,
    uow: DbSession,
    client: ClientDep,
) -> StepUpResponse | Response:
    """Prove a second factor again inside this session: its `acr` is `mfa` for STEP_UP_TTL
    seconds (routes that require a recent factor accept it), and the answer holds a new access
    token that says so. The refresh token is unchanged."""
    stepped = await factors.step_up(uow, client, auth.session, body.proof(), auth.claims.jkt)
    if isinstance(stepped, FactorRefused):
        return domain_error_response(InvalidFactorCode())
    return StepUpResponse(
        access_token=stepped.access.token,
        token_type="DPoP" if stepped.jkt is not None else "Bearer",
        expires_in=stepped.access.expires_in,
        acr=stepped.acr,
        amr=stepped.session.methods,
        acr_expires_at=stepped.acr_expires_at.isoformat(),
    )


@mfa_router.post(
    "/step-up/passkey-options",
    response_model=CeremonyResponse,
    responses={409: _NO_FACTOR},
)
async def step_up_passkey_options(
    auth: CurrentSession, factors: AccountFactorsDep, uow: DbSession
) -> CeremonyResponse:
    """Options for proving a passkey inside this session (POST /auth/step-up, and turning a
    factor off or new recovery codes): an assertion by one of the account's passkeys."""
    ceremony = await factors.step_up_options(uow, auth.session)
    return CeremonyResponse(ceremony=ceremony.handle, options=ceremony.options)


# --- passkeys (docs/mfa.md) --------------------------------------------------------------------

_PASSKEY_404 = {"description": "`passkey_not_found`: not a passkey of yours"}


@mfa_router.post(
    "/passkeys/register/options",
    response_model=CeremonyResponse,
    responses={
        403: {"description": "`invalid_current_password` (counted toward the lockout)"},
        429: _STEP_UP_LIMIT,
    },
)
async def passkey_registration_options(
    body: PasskeyOptionsRequest,
    auth: CurrentSession,
    factors: AccountFactorsDep,
    uow: DbSession,
    client: ClientDep,
) -> CeremonyResponse | Response:
    """Start registering a passkey, with the account's password: options for
    navigator.credentials.create() (a discoverable credential, user verification required).
    Answer with POST /auth/passkeys."""
    ceremony = await factors.begin_passkey(uow, client, auth.session, body.password, body.name)
    if isinstance(ceremony, FactorRefused):
        return domain_error_response(WrongCurrentPassword())
    return CeremonyResponse(ceremony=ceremony.handle, options=ceremony.options)


@mfa_router.post(
    "/passkeys",
    status_code=status.HTTP_201_CREATED,
    responses={
        400: {
            "description": "`invalid_mfa_code`: the registration does not check out (origin, RP "
            "ID, challenge, user verification, a passkey registered already); "
            "`passkey_ceremony_invalid`"
        }
    },
)
async def register_passkey(
    body: PasskeyProofBody,
    auth: CurrentSession,
    factors: AccountFactorsDep,
    uow: DbSession,
    client: ClientDep,
) -> PasskeyOut:
    """The browser's answer to the registration options: the passkey is yours, a second factor
    and a passwordless login from now on. You are told by email."""
    passkey = await factors.register_passkey(uow, client, auth.session, body.proof())
    return _passkey_out(passkey)


@mfa_router.get("/passkeys")
async def list_passkeys(
    auth: CurrentSession, factors: AccountFactorsDep, uow: DbSession
) -> list[PasskeyOut]:
    """Your passkeys, oldest first."""
    return [_passkey_out(p) for p in await factors.passkeys(uow, auth.session)]


@mfa_router.patch(
    "/passkeys/{passkey_id}", status_code=status.HTTP_204_NO_CONTENT, responses={404: _PASSKEY_404}
)
async def rename_passkey(
    passkey_id: uuid.UUID,
    body: PasskeyRenameRequest,
    auth: CurrentSession,
    factors: AccountFactorsDep,
    uow: DbSession,
) -> Response:
    """Rename one of your passkeys."""
    await factors.rename_passkey(uow, auth.session, passkey_id, body.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@mfa_router.delete(
    "/passkeys/{passkey_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        401: {
            "description": "`insufficient_authentication`: no second factor proved within "
            "STEP_UP_TTL (POST /auth/step-up first)"
        },
        404: _PASSKEY_404,
    },
)
async def delete_passkey(
    passkey_id: uuid.UUID,
    auth: CurrentSession,
    factors: AccountFactorsDep,
    uow: DbSession,
    client: ClientDep,
) -> Response:
    """Delete one of your passkeys; needs a second factor proved recently (a step-up). The last
    factor gone, logins take the password alone. You are told by email."""
    await factors.delete_passkey(uow, client, auth.session, passkey_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _passkey_out(passkey: StoredPasskey) -> PasskeyOut:
    return PasskeyOut(
        id=passkey.id,
        name=passkey.name,
        created_at=passkey.created_at,
        last_used_at=passkey.last_used_at,
        backed_up=passkey.backed_up,
    )
