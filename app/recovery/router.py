"""Registration, password reset and address verification: the routes whose proof is an email."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from fastapi.responses import JSONResponse

from app.auth.dependencies import CurrentSession
from app.core.dependencies import ClientDep, DbSession, LimiterDep, SettingsDep
from app.core.error_handlers import domain_error_response
from app.core.exposure import public
from app.recovery.dependencies import (
    EmailVerificationDep,
    PasswordResetsDep,
    RegistrationsDep,
)
from app.recovery.registration import Confirmation
from app.recovery.schemas import (
    RegisterRequest,
    RegistrationAccepted,
    ResetAccepted,
    ResetConfirm,
    ResetRequest,
    VerificationSent,
    VerifyEmailConfirm,
)
from app.users.errors import EmailTaken, RegistrationClosed
from app.users.schemas import UserOut
from app.users.service import check_email

register_router = APIRouter(prefix="/auth", tags=["account"])
router = APIRouter(prefix="/auth/password-reset", tags=["account"])
verify_router = APIRouter(prefix="/auth/verify-email", tags=["account"])


@register_router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    response_model=UserOut,
    responses={
        202: {
            "model": RegistrationAccepted,
            "description": "REQUIRE_VERIFIED_EMAIL: accepted, for a new address and a known "
            "one alike; the account is made when the emailed link is followed",
        },
        403: {"description": "`registration_closed`"},
        409: {"description": "`email_taken` (only without REQUIRE_VERIFIED_EMAIL)"},
        422: {"description": "`invalid_email`, `invalid_password`"},
        429: {
            "description": "`rate_limited`: RATE_LIMIT_LOGIN_IP per address, "
            "RATE_LIMIT_REGISTER_ACCOUNT per email (Retry-After)"
        },
    },
)
@public
async def register(
    body: RegisterRequest,
    registrations: RegistrationsDep,
    settings: SettingsDep,
    limiter: LimiterDep,
    uow: DbSession,
    client: ClientDep,
) -> UserOut | JSONResponse:
    """Create an account (only when ALLOW_REGISTRATION=true); a verification link is emailed.

    Without REQUIRE_VERIFIED_EMAIL the account exists on return (201), and a taken address
    answers 409. With it, every address gets the same 202 in the same time; a new address is
    emailed a link, and the account is made when it is followed (POST
    /auth/verify-email/confirm); the owner of a taken address is emailed instead. So neither
    the answer nor a login afterwards tells which addresses have accounts."""
    if not settings.allow_registration:
        raise RegistrationClosed()
    await limiter.hit("login_ip", client.ip or "unknown")
    if settings.require_verified_email:
        email = check_email(body.email)
        await limiter.hit("register_account", email)
        await registrations.request(uow, client, email, body.password)
        accepted = RegistrationAccepted().model_dump()
        return JSONResponse(accepted, status_code=status.HTTP_202_ACCEPTED)
    user_id, email = await registrations.register(uow, client, body.email, body.password)
    return UserOut(id=user_id, email=email, role="user", is_active=True)


@router.post(
    "/request",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        422: {"description": "`invalid_email`: not an email address"},
        429: {
            "description": "`rate_limited`: RATE_LIMIT_PASSWORD_RESET_IP per address, "
            "RATE_LIMIT_PASSWORD_RESET_ACCOUNT per email (Retry-After)"
        },
    },
)
@public
async def request_reset(
    body: ResetRequest,
    resets: PasswordResetsDep,
    limiter: LimiterDep,
    uow: DbSession,
    client: ClientDep,
) -> ResetAccepted:
    """Ask for a password reset link by email.

    The answer is the same, in the same time, whether an account exists for the address or
    not; only its owner's mailbox learns. The link holds a single-use token valid for
    PASSWORD_RESET_TTL seconds; a newer request or any password change voids it."""
    email = check_email(body.email)
    await limiter.hit("password_reset_ip", client.ip or "unknown")
    await limiter.hit("password_reset_account", email)
    await resets.request(uow, client, email)
    return ResetAccepted()


@router.post(
    "/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        400: {"description": "`reset_token_invalid`: unknown, used, superseded or expired"},
        422: {"description": "`invalid_password`: the new password breaks the policy"},
        429: {"description": "`rate_limited`: RATE_LIMIT_PASSWORD_RESET_CONFIRM_IP"},
    },
)
@public
async def confirm_reset(
    body: ResetConfirm,
    resets: PasswordResetsDep,
    limiter: LimiterDep,
    uow: DbSession,
    client: ClientDep,
) -> None:
    """Set a new password with the emailed token. Every session of the account ends (and
    back-channel logout tells the services that asked); the token cannot be used again.
    PASSWORD_RESET_MAX_ATTEMPTS refused new passwords spend the token too."""
    await limiter.hit("password_reset_confirm_ip", client.ip or "unknown")
    await resets.confirm(uow, client, body.token, body.new_password)


@verify_router.post(
    "/request",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        409: {"description": "`email_already_verified`"},
        429: {"description": "`rate_limited`: RATE_LIMIT_VERIFY_EMAIL_ACCOUNT (Retry-After)"},
    },
)
async def request_verification(
    auth: CurrentSession, verification: EmailVerificationDep, uow: DbSession, client: ClientDep
) -> VerificationSent:
    """Email a verification link to your address (older links stop working)."""
    await verification.request(uow, client, auth.session.user_id)
    return VerificationSent()


@verify_router.post(
    "/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        400: {
            "description": "`verification_token_invalid`: unknown, used, superseded, expired; "
            "for a registration's link `password_required`, `password_mismatch` (after 5 "
            "wrong ones the link stops working)"
        },
        409: {"description": "`email_taken`: the address got an account meanwhile"},
        429: {"description": "`rate_limited`: RATE_LIMIT_PASSWORD_RESET_CONFIRM_IP"},
    },
)
@public
async def confirm_verification(
    body: VerifyEmailConfirm,
    verification: EmailVerificationDep,
    registrations: RegistrationsDep,
    settings: SettingsDep,
    limiter: LimiterDep,
    uow: DbSession,
    client: ClientDep,
) -> Response:
    """Prove the address with the emailed token: the account counts as verified.

    With REQUIRE_VERIFIED_EMAIL a registration's link makes its account here, and needs the
    `password` the registration chose (`password_required` without it): a link someone else's
    registration sent you is of no use to them, nor to you."""
    await limiter.hit("password_reset_confirm_ip", client.ip or "unknown")
    if settings.allow_registration:
        done = await registrations.confirm(uow, client, body.token, body.password)
        if done is Confirmation.ADDRESS_TAKEN:
            return domain_error_response(EmailTaken())  # returned: the unit of work commits
        if done is Confirmation.CONFIRMED:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
    await verification.confirm(uow, client, body.token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
