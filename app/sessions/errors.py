"""Every session failure a client can see, each with its stable code."""

from __future__ import annotations

from app.core.errors import NotFoundError, UnauthorizedError


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


class SessionNotFound(NotFoundError):
    code = "session_not_found"
    message = "No such live session of yours."
