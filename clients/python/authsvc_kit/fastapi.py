"""FastAPI integration: Annotated aliases for the verified caller.

`Identity` is a user with a session: a service client's token (client_credentials) gets 403
`user_token_required` there. `Caller` also accepts service clients, for routes meant to be
called by other services (`principal.is_service` tells them apart)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, Request, WebSocketException
from fastapi.responses import Response
from starlette.requests import HTTPConnection
from starlette.routing import Route

from authsvc_kit.errors import AuthError, NotAuthenticated, UserTokenRequired
from authsvc_kit.middleware import AuthMiddleware
from authsvc_kit.principal import Principal
from authsvc_kit.websocket import PRINCIPAL_SCOPE_KEY

if TYPE_CHECKING:
    from authsvc_kit.kit import Kit


def current_principal(connection: HTTPConnection) -> Principal:
    """The principal the middleware verified (for a WebSocket: as of the latest renewal)."""
    principal = connection.scope.get(PRINCIPAL_SCOPE_KEY)
    if not isinstance(principal, Principal):
        raise NotAuthenticated()
    return principal


async def _identity(connection: HTTPConnection) -> Principal:
    # async: FastAPI would run a plain function in its thread pool, a third of a request's cost.
    principal = current_principal(connection)
    if principal.is_service:
        if connection.scope["type"] == "websocket":
            # A close code the client can act on, as the kit's own refusals (not a dropped
            # connection: an exception in a WebSocket dependency would end it without a frame).
            raise WebSocketException(code=4403, reason=UserTokenRequired.code)
        raise UserTokenRequired()
    return principal


async def _caller(connection: HTTPConnection) -> Principal:
    return current_principal(connection)


# A user with a session (every route that acts for a user); service tokens get 403.
Identity = Annotated[Principal, Depends(_identity)]
UserIdentity = Identity
# A user or a service client: for routes that other services may call.
Caller = Annotated[Principal, Depends(_caller)]


async def _auth_error(_request: Request, exc: Exception) -> Response:
    if not isinstance(exc, AuthError):  # registered for AuthError only
        raise exc
    return Response(
        exc.body(), status_code=exc.status, headers=exc.headers(), media_type="application/json"
    )


def install(kit: Kit, app: FastAPI, *, backchannel_path: str | None) -> None:
    excluded = [backchannel_path] if backchannel_path else []
    app.add_middleware(AuthMiddleware, kit=kit, exclude_paths=excluded)
    app.add_exception_handler(AuthError, _auth_error)
    if backchannel_path:
        # An ASGI endpoint (not a function): Starlette answers 405 to other methods itself.
        route = Route(backchannel_path, kit.backchannel, methods=["POST"], include_in_schema=False)
        app.router.routes.append(route)
