"""Pure ASGI middleware for any Starlette/ASGI application (no BaseHTTPMiddleware).

HTTP: a request with `Authorization: Bearer` (or `DPoP`, with its `DPoP` proof) is verified; a
valid token puts its `Principal` in `scope["authsvc.principal"]`, a bad one is answered 401 (503
when the issuer's keys cannot be had) before the application sees it. A DPoP-bound token
(`cnf.jkt`) passes only as `Authorization: DPoP` with a valid proof for this request. A request
without a token passes through unauthenticated (the FastAPI dependency refuses it where identity
is needed) unless `required=True`.
WebSocket: every connection is authenticated and bound to its session (authsvc_kit.websocket)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from authsvc_kit.dpop import presentation
from authsvc_kit.errors import AuthError, NotAuthenticated
from authsvc_kit.websocket import PRINCIPAL_SCOPE_KEY, WebSocketSession

if TYPE_CHECKING:
    from authsvc_kit.kit import Kit

KIT_SCOPE_KEY = "authsvc.kit"


class AuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        kit: Kit,
        *,
        required: bool = False,
        exclude_paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.kit = kit
        self.required = required
        self.exclude_paths = frozenset(exclude_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.exclude_paths:
            await self.app(scope, receive, send)
            return
        scope[KIT_SCOPE_KEY] = self.kit
        if scope["type"] == "websocket":
            await self.kit.websocket_session(scope, receive, send).run(self.app)
            return
        presented = presentation(scope, self.kit.request_url)
        try:
            if presented is not None:
                token, how = presented
                scope[PRINCIPAL_SCOPE_KEY] = await self.kit.authenticate(token, how)
            elif self.required:
                raise NotAuthenticated()
        except AuthError as exc:
            await send_error(send, exc)
            return
        await self.app(scope, receive, send)


async def send_error(send: Send, error: AuthError) -> None:
    body = error.body()
    headers = {"content-type": "application/json", "content-length": str(len(body))}
    headers.update({k.lower(): v for k, v in error.headers().items()})
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": body})


__all__ = ["KIT_SCOPE_KEY", "PRINCIPAL_SCOPE_KEY", "AuthMiddleware", "WebSocketSession"]
