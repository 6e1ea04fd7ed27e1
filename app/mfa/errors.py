from __future__ import annotations

from typing import ClassVar

from app.core.errors import DomainError


class InvalidFactorCode(DomainError):
    """A second factor that does not check out, inside a live session (enrolment, step-up, turning
    a factor off). The two-step login answers its own 401 (app.auth.errors)."""

    status_code = 400
    code = "invalid_mfa_code"
    message = "The code is wrong, used already, or not for this account's second factor."


class PasskeyCeremonyInvalid(DomainError):
    status_code = 400
    code = "passkey_ceremony_invalid"
    message = (
        "This passkey ceremony is unknown, used, expired or for something else: ask for new "
        "options."
    )


class PasskeyNotFound(DomainError):
    status_code = 404
    code = "passkey_not_found"
    message = "No such passkey of yours."


class TotpAlreadyEnabled(DomainError):
    status_code = 409
    code = "totp_already_enabled"
    message = "This account has an authenticator app already: turn it off first to enrol another."


class TotpNotEnrolling(DomainError):
    status_code = 409
    code = "totp_not_enrolling"
    message = "Start an enrolment (POST /auth/mfa/totp) before confirming one."


class MfaNotEnabled(DomainError):
    status_code = 409
    code = "mfa_not_enabled"
    message = "This account has no second factor."


class SecondFactorsPaused(DomainError):
    """Too many wrong codes in a row: no code of the account is checked until the pause ends
    (the factors' own lockout; docs/mfa.md)."""

    status_code = 429
    code = "mfa_locked"

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"Too many wrong codes: this account's second factor is not checked for "
            f"{retry_after} seconds."
        )
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class SecondFactorUnreadable(DomainError):
    """The account's sealed TOTP secret does not open with this server's key (SECRET_KEY was
    changed): no code can be checked until an operator resets the factor."""

    status_code = 409
    code = "mfa_unavailable"
    message = (
        "This account's second factor cannot be checked on this server (its key changed): ask "
        "an operator to reset it (python -m app users reset-mfa)."
    )


class InsufficientAuthentication(DomainError):
    """RFC 9470: the session must prove a second factor again (step up) for this request."""

    status_code = 401
    code = "insufficient_authentication"
    acr_value: ClassVar[str] = "mfa"

    def __init__(self, detail: str, max_age: int) -> None:
        super().__init__(detail)
        self.max_age = max_age

    def headers(self) -> dict[str, str]:
        return {
            "WWW-Authenticate": (
                'Bearer realm="authsvc", error="insufficient_user_authentication", '
                f'error_description="{self.code}", acr_values="{self.acr_value}", '
                f'max_age="{self.max_age}"'
            ),
            "X-Auth-Error": self.code,
        }
