"""Domain errors with a stable code, and the handlers that render the one error envelope."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("app.errors")


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


def domain_error_response(exc: DomainError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers())


# SQLSTATEs a client should simply retry: deadlock / serialisation failures (the transaction was
# rolled back), and the classes of a server going away or coming back: 08 connection exception,
# 53 insufficient resources, 57 operator intervention (shutting down, starting up).
_RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
_RETRYABLE_SQLSTATE_CLASSES = frozenset({"08", "53", "57"})


def is_database_unavailable(exc: BaseException) -> bool:
    """Failures a client should retry (503), as opposed to bugs (500)."""
    if isinstance(exc, PoolTimeoutError | OperationalError | ConnectionError | OSError):
        return True
    if type(exc) is asyncpg.InterfaceError:  # raw driver: closed or unusable connection
        return True  # (its subclasses are client-side mistakes: bad data, unsupported feature)
    if isinstance(exc, asyncpg.PostgresError):  # raw driver (see core.db.driver_connection)
        return _retryable_sqlstate(str(exc.sqlstate or ""))
    if not isinstance(exc, DBAPIError):
        return False
    sqlstate = str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None) or "")
    return exc.connection_invalidated or _retryable_sqlstate(sqlstate)


def _retryable_sqlstate(sqlstate: str) -> bool:
    return sqlstate in _RETRYABLE_SQLSTATES or sqlstate[:2] in _RETRYABLE_SQLSTATE_CLASSES


_HTTP_CODES = {
    400: ("malformed_body", "The request body could not be parsed."),
    404: ("not_found", "Not found."),
    405: ("method_not_allowed", "Method not allowed."),
    413: ("payload_too_large", "Request body too large."),
    415: ("unsupported_media_type", "Unsupported media type."),
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        return domain_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {"loc": list(err.get("loc", ())), "type": err.get("type"), "msg": err.get("msg")}
            for err in exc.errors()
        ]
        body = error_body("validation_error", "The request body or parameters are invalid.")
        body["error"]["fields"] = fields
        return JSONResponse(body, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code, message = _HTTP_CODES.get(exc.status_code, ("http_error", str(exc.detail)))
        return JSONResponse(
            error_body(code, message), status_code=exc.status_code, headers=exc.headers
        )

    async def _database(_: Request, exc: Exception) -> JSONResponse:
        # Registered for the types a database failure raises, so Starlette's
        # ExceptionMiddleware answers them inside the middleware stack (request id, no-store,
        # metrics see the 503). The catch-all below runs in ServerErrorMiddleware, which
        # re-raises after responding.
        if not is_database_unavailable(exc):
            raise exc  # a bug, not an outage: the catch-all answers 500 and logs it
        logger.warning("db.unavailable", extra={"error_type": type(exc).__name__})
        return domain_error_response(ServiceUnavailableError())

    app.add_exception_handler(SQLAlchemyError, _database)
    app.add_exception_handler(OSError, _database)
    app.add_exception_handler(asyncpg.PostgresError, _database)
    app.add_exception_handler(asyncpg.InterfaceError, _database)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        if is_database_unavailable(exc):
            logger.warning("db.unavailable", extra={"error_type": type(exc).__name__})
            return domain_error_response(ServiceUnavailableError())
        logger.error("request.unhandled_error", exc_info=exc)
        return JSONResponse(
            error_body("internal_error", "An unexpected error occurred."), status_code=500
        )
