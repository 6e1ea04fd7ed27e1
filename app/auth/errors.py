"""Every authentication failure a client can see, each with its stable code (the session's
own failures are in app/sessions/errors.py)."""

from __future__ import annotations

from typing import Any

from app.core.errors import DomainError, ForbiddenError, UnauthorizedError


class InvalidCredentials(UnauthorizedError):
    code = "invalid_credentials"
    message = "Incorrect email or password."

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="authsvc"', "X-Auth-Error": self.code}


class MfaCodeRefused(UnauthorizedError):
    code = "invalid_mfa_code"
    message = "The code is wrong or used already."

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="authsvc"', "X-Auth-Error": self.code}


class MfaChallengeInvalid(UnauthorizedError):
    code = "mfa_challenge_invalid"
    message = (
        "This login challenge is unknown, used, expired or ended by too many wrong codes: "
        "log in again."
    )

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="authsvc"', "X-Auth-Error": self.code}


class InvalidToken(UnauthorizedError):
    code = "invalid_token"
    message = "The access token is malformed, has a bad signature or wrong claims."


class TokenExpired(UnauthorizedError):
    code = "token_expired"
    message = "The access token has expired; refresh it."


class NotAuthenticated(UnauthorizedError):
    code = "not_authenticated"
    message = "Authentication required: send an access token as `Authorization: Bearer <token>`."


class ClientDisabled(UnauthorizedError):
    code = "client_disabled"
    message = "The service client of this access token has been disabled."


class UserTokenRequired(ForbiddenError):
    """A service client's token (client_credentials) on a route that needs a user's session."""

    code = "user_token_required"
    message = "This route needs a user's access token; a service client's token is refused."


class CsrfFailed(ForbiddenError):
    code = "csrf_failed"
    message = "Cross-site request refused: missing or wrong CSRF token, origin or content type."


class OAuthError(DomainError):
    """An RFC 6749 §5.2 error from the token endpoint: its own body shape, not the envelope."""

    code = "invalid_request"

    def __init__(
        self,
        error: str,
        description: str,
        *,
        status: int = 400,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(description)
        self.error = error
        self._status = status
        self._headers = headers or {}

    @property
    def status_code(self) -> int:  # type: ignore[override]
        return self._status

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.detail}

    def headers(self) -> dict[str, str]:
        return {"Cache-Control": "no-store", "Pragma": "no-cache", **self._headers}


class EmailNotVerified(DomainError):
    """With REQUIRE_VERIFIED_EMAIL: the right password, an unproven address."""

    status_code = 403
    code = "email_not_verified"
    message = (
        "This account's email address is not verified yet: follow the link just sent to it, "
        "then log in again."
    )
