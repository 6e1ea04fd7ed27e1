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


class RefreshTokenSuperseded(UnauthorizedError):
    """A delayed duplicate: an older refresh token, arriving within the reuse interval of its
    first use after its successor was used too. The session is kept; the client (or another of
    its tabs) holds a newer token and should use that one."""

    code = "refresh_token_superseded"
    message = (
        "This refresh token was already replaced by a newer one; use the newest refresh "
        "token. The session is not affected."
    )


class SessionNotFound(NotFoundError):
    code = "session_not_found"
    message = "No such live session of yours."
