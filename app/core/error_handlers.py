"""The handlers that render every error as the one envelope `{"error": {"code", "message"}}`."""

from __future__ import annotations

import logging

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.errors import (
    DomainError,
    ServiceUnavailableError,
    error_body,
    is_database_unavailable,
)

logger = logging.getLogger("app.errors")


def domain_error_response(exc: DomainError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers())


def http_error_response(exc: StarletteHTTPException) -> JSONResponse:
    code, message = _HTTP_CODES.get(exc.status_code, ("http_error", str(exc.detail)))
    return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)


def unexpected_error_response(exc: Exception) -> JSONResponse:
    """The answer to an exception no handler inside took: an HTTPException's own (the body
    limit's 413, raised by the receive it wraps), 503 for a database outage, else 500
    `internal_error` (logged with its traceback, which never reaches the client)."""
    if isinstance(exc, StarletteHTTPException):
        return http_error_response(exc)
    if is_database_unavailable(exc):
        logger.warning("db.unavailable", extra={"error_type": type(exc).__name__})
        return domain_error_response(ServiceUnavailableError())
    logger.error("request.unhandled_error", exc_info=exc)
    return JSONResponse(
        error_body("internal_error", "An unexpected error occurred."), status_code=500
    )


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
        return http_error_response(exc)

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
    app.add_exception_handler(asyncpg.InternalClientError, _database)  # not an InterfaceError

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return unexpected_error_response(exc)
