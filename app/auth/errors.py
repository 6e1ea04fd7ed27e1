"""Every authentication failure a client can see, each with its stable code."""

from __future__ import annotations

from typing import Any

from app.core.errors import DomainError, ForbiddenError, UnauthorizedError


class InvalidCredentials(UnauthorizedError):
    code = "invalid_credentials"
    message = "Incorrect email or password."
    persist = True  # the failed-login audit event must be stored

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="authsvc"', "X-Auth-Error": self.code}


class InvalidToken(UnauthorizedError):
    code = "invalid_token"
    message = "The access token is malformed, has a bad signature or wrong claims."


class TokenExpired(UnauthorizedError):
    code = "token_expired"
    message = "The access token has expired; refresh it."


class SessionRevoked(UnauthorizedError):
    code = "session_revoked"
    message = "The session has been revoked; log in again."


class SessionExpired(UnauthorizedError):
    code = "session_expired"
    message = "The session has expired; log in again."


class RefreshTokenInvalid(UnauthorizedError):
    code = "refresh_token_invalid"
    message = "The refresh token is unknown or malformed."


class RefreshTokenReused(UnauthorizedError):
    code = "refresh_token_reused"
    message = "This refresh token was already used; the session has been revoked."
    persist = True  # the revocation and its audit event must survive the error response


class NotAuthenticated(UnauthorizedError):
    code = "not_authenticated"
    message = "Authentication required: send an access token as `Authorization: Bearer <token>`."


class CsrfFailed(ForbiddenError):
    code = "csrf_failed"
    message = "Cross-site request refused: missing or wrong CSRF token, origin or content type."


class OAuthError(DomainError):
    """An RFC 6749 §5.2 error from the token endpoint: its own body shape, not the envelope."""

    code = "invalid_request"

    def __init__(self, error: str, description: str, *, persist: bool = False, status: int = 400):
        super().__init__(description)
        self.error = error
        self.persist = persist
        self._status = status

    @property
    def status_code(self) -> int:  # type: ignore[override]
        return self._status

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.detail}

    def headers(self) -> dict[str, str]:
        return {"Cache-Control": "no-store", "Pragma": "no-cache"}
