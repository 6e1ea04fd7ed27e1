"""What a caller can be refused with: a status, a stable code and the RFC 6750 challenge."""

from __future__ import annotations

import json
from typing import ClassVar


class AuthError(Exception):
    status: ClassVar[int] = 401
    code: ClassVar[str] = "invalid_token"
    message: ClassVar[str] = "The access token is malformed, has a bad signature or wrong claims."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.message)
        self.detail = detail or self.message

    def headers(self) -> dict[str, str]:
        # RFC 6750 §3.1: every refused token is `invalid_token`; our code says which check.
        return {
            "WWW-Authenticate": 'Bearer error="invalid_token"',
            "Cache-Control": "no-store",
        }

    def body(self) -> bytes:
        return json.dumps({"error": {"code": self.code, "message": self.detail}}).encode()


class InvalidToken(AuthError):
    pass


class TokenExpired(AuthError):
    code = "token_expired"
    message = "The access token has expired; refresh it."


class SessionRevoked(AuthError):
    code = "session_revoked"
    message = "The session of this access token has ended."


class NotAuthenticated(AuthError):
    code = "not_authenticated"
    message = "Authentication required: send an access token as `Authorization: Bearer <token>`."

    def headers(self) -> dict[str, str]:
        # RFC 6750 §3.1: no credentials at all gets the bare challenge, no error code.
        return {"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"}


class ClientDisabled(AuthError):
    code = "client_disabled"
    message = "The service client of this access token has been disabled."


class UserTokenRequired(AuthError):
    """A service client's token on a route that needs a user (`Identity`): 403, since the
    token is valid and a fresh one would be refused the same way."""

    status = 403
    code = "user_token_required"
    message = "This route needs a user's access token; a service client's token is refused."

    def headers(self) -> dict[str, str]:
        # RFC 6750 §3.1: a valid token without the privileges the resource needs.
        return {
            "WWW-Authenticate": 'Bearer error="insufficient_scope"',
            "Cache-Control": "no-store",
        }


class Unavailable(AuthError):
    """A dependency the check needs is down: 503, never 500, and never a silent accept."""

    status = 503
    code = "issuer_unavailable"
    message = "The auth service's signing keys cannot be fetched right now; try again."

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1", "Cache-Control": "no-store"}


class IssuerUnavailable(Unavailable):
    pass


class RevocationsUnavailable(Unavailable):
    code = "revocations_unavailable"
    message = "The shared revocation list cannot be read right now; try again."


class TokenRequestFailed(Exception):
    """An outgoing call's client_credentials token could not be had (authsvc_kit.outgoing):
    `error` is the token endpoint's RFC 6749 §5.2 code (`invalid_client`, `invalid_scope`...)
    or `unavailable` when it could not be reached, answered out of protocol, or in time."""

    def __init__(self, error: str, description: str, *, status: int | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
