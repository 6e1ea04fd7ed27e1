"""Domain errors with a stable code, and which database failures are outages (503), not bugs.

Free of HTTP: the handlers that render the one error envelope are app.core.error_handlers."""

from __future__ import annotations

from typing import Any, ClassVar

import asyncpg
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError


class DomainError(Exception):
    """Base of every error a client may see. Subclasses fix status, code and message."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    message: ClassVar[str] = "The request could not be processed."

    def __init__(self, message: str | None = None) -> None:
        self.detail = message or self.message
        super().__init__(self.detail)

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.detail)


class UnauthorizedError(DomainError):
    status_code = 401
    code = "not_authenticated"
    message = "Authentication required."

    def headers(self) -> dict[str, str]:
        # X-Auth-Error lets a gateway (nginx auth_request, Traefik ForwardAuth) pass the reason
        # on without parsing a body it never sees.
        if self.code == "not_authenticated":
            return {"WWW-Authenticate": 'Bearer realm="authsvc"', "X-Auth-Error": self.code}
        return {
            "WWW-Authenticate": (
                f'Bearer realm="authsvc", error="invalid_token", error_description="{self.code}"'
            ),
            "X-Auth-Error": self.code,
        }


class ForbiddenError(DomainError):
    status_code = 403
    code = "forbidden"
    message = "You are not allowed to do this."


class NotFoundError(DomainError):
    status_code = 404
    code = "not_found"
    message = "Not found."


class ServiceUnavailableError(DomainError):
    status_code = 503
    code = "service_unavailable"
    message = "The service is temporarily unavailable; retry shortly."

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "2"}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


# SQLSTATEs a client should simply retry: deadlock / serialisation failures (the transaction was
# rolled back), and the classes of a server going away or coming back: 08 connection exception,
# 53 insufficient resources, 57 operator intervention (shutting down, starting up).
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
_RETRYABLE_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})


# The raw driver's errors of a connection that is gone or unusable (as opposed to its other
# InterfaceErrors, client-side mistakes: bad data, an unsupported feature). InternalClientError
# is a connection whose protocol state broke under an interrupted operation ("cannot switch to
# state 12; another operation is in progress", seen while backends were being killed).
_DRIVER_CONNECTION_ERRORS = (asyncpg.ConnectionDoesNotExistError, asyncpg.InternalClientError)


def is_database_unavailable(exc: BaseException) -> bool:
    """Failures a client should retry (503), as opposed to bugs (500). Timeouts (the pool's,
    a connect's, a command's: TimeoutError is an OSError) are among them."""
    if isinstance(exc, PoolTimeoutError | OperationalError | ConnectionError | OSError):
        return True
    if type(exc) is asyncpg.InterfaceError or isinstance(exc, _DRIVER_CONNECTION_ERRORS):
        return True
    if isinstance(exc, asyncpg.PostgresError):  # raw driver (see core.db.driver_connection)
        return _retryable_sqlstate(str(exc.sqlstate or ""))
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None) or "")
    # SQLAlchemy's asyncpg adapter wraps the driver's error: judge that one as above.
    driver_error = exc.orig.__cause__ if exc.orig is not None else None
    return _retryable_sqlstate(sqlstate) or (
        driver_error is not None and is_database_unavailable(driver_error)
    )


def _retryable_sqlstate(sqlstate: str) -> bool:
    return sqlstate in _RETRYABLE_SQLSTATES or sqlstate[:2] in _RETRYABLE_SQLSTATE_CLASSES
