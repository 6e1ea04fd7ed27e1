"""WebSocket sessions: a connection lives only as long as the session that opened it.

Authentication, never with a token in the URL (URLs end up in access logs and proxies' logs):
- an `Authorization: Bearer` header on the handshake, for non-browser clients;
- otherwise the first message, `{"type": "authenticate", "token": "..."}`, within
  `ws_auth_timeout` seconds, for browsers (their WebSocket API cannot set headers).
The kit accepts the connection itself (a close code can only be delivered on an accepted
connection), then hands it to the application, which sees `websocket.connect` as usual; its own
`websocket.accept` is then a no-op.

Messages from the kit: `{"type": "token_expiring", "expires_at": <unix>}` shortly before the
token expires (`ws_expiry_margin`, at most a third of the token's life);
`{"type": "token_renewed", "expires_at": <unix>}` after the client sent
`{"type": "authenticate", "token": "<newer token>"}` on the same connection (same sid and sub,
later exp). The kit consumes `authenticate` messages: the application never sees them.

Close codes: 4400 `authentication_required` (no, invalid or mismatched token at the start or in
a renewal), 4401 `token_expired` (no fresh token in time: refresh and reconnect), 4403
`session_revoked` (back-channel logout: do not reconnect), 1013 `issuer_unavailable` (keys
cannot be fetched: try again later)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authsvc_kit.errors import AuthError, Unavailable
from authsvc_kit.principal import Principal
from authsvc_kit.revocation import Revocation

logger = logging.getLogger("authsvc_kit.websocket")
PRINCIPAL_SCOPE_KEY = "authsvc.principal"
AUTHENTICATION_REQUIRED = (4400, "authentication_required")
TOKEN_EXPIRED = (4401, "token_expired")
SESSION_REVOKED = (4403, "session_revoked")
ISSUER_UNAVAILABLE = (1013, "issuer_unavailable")
_QUEUE_SIZE = 256  # messages the application has not read yet; beyond it reading pauses

Authenticate = Callable[[str], Awaitable[Principal]]


class SocketRegistry:
    """The open connections by session and by user, to close them on a revocation."""

    def __init__(self) -> None:
        self._sockets: weakref.WeakSet[WebSocketSession] = weakref.WeakSet()

    def add(self, session: WebSocketSession) -> None:
        self._sockets.add(session)

    def discard(self, session: WebSocketSession) -> None:
        self._sockets.discard(session)

    def __len__(self) -> int:
        return len(self._sockets)

    def on_revocation(self, revocation: Revocation) -> None:
        # Called from the receiver or the Redis listener, in the event loop: closing is
        # scheduled at once, so the socket is closed within milliseconds.
        for session in list(self._sockets):
            if session.principal is not None and revocation.covers(session.principal):
                session.close_soon(*SESSION_REVOKED)


def expiry_margin(principal: Principal, configured: float) -> float:
    """How long before exp `token_expiring` is sent: the configured margin, but at most a third
    of the token's life (a 3 s token hears it 1 s before), so a short token is not told at once."""
    lifetime = max(principal.expires_at - principal.issued_at, 1)
    return max(min(configured, lifetime / 3), 0.2)


class WebSocketSession:
    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        authenticate: Authenticate,
        registry: SocketRegistry,
        auth_timeout: float,
        expiry_margin: float,
    ) -> None:
        self.scope = dict(scope)
        self._receive = receive
        self._send = send
        self._authenticate = authenticate
        self._registry = registry
        self._auth_timeout = auth_timeout
        self._margin = expiry_margin
        self.principal: Principal | None = None
        self._inbox: asyncio.Queue[Message] = asyncio.Queue(_QUEUE_SIZE)
        self._closed = False
        self._connect: Message | None = None
        self._renewed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self, app: ASGIApp) -> None:
        self._connect = await self._receive()
        if self._connect["type"] != "websocket.connect":
            return
        await self._send({"type": "websocket.accept"})
        try:
            self.principal = await self._first_principal()
        except Unavailable:
            await self._close(*ISSUER_UNAVAILABLE)
            return
        except (AuthError, TimeoutError):
            await self._close(*AUTHENTICATION_REQUIRED)
            return
        self.scope[PRINCIPAL_SCOPE_KEY] = self.principal
        self._registry.add(self)
        self._tasks = [
            asyncio.create_task(self._read(), name="authsvc-kit-ws-read"),
            asyncio.create_task(self._watch_expiry(), name="authsvc-kit-ws-expiry"),
        ]
        try:
            await app(self.scope, self._app_receive, self._app_send)
        finally:
            self._registry.discard(self)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _first_principal(self) -> Principal:
        token = bearer_token(self.scope)
        if token is not None:
            return await self._authenticate(token)
        async with asyncio.timeout(self._auth_timeout):
            message = await self._receive()
        token = _authenticate_token(message)
        if token is None:
            raise AuthError("The first message must be {type: authenticate, token}.")
        return await self._authenticate(token)

    # -- what the application sees ------------------------------------------------------
    async def _app_receive(self) -> Message:
        if self._connect is not None:
            message, self._connect = self._connect, None
            return message
        return await self._inbox.get()

    async def _app_send(self, message: Message) -> None:
        if message["type"] == "websocket.accept":
            return  # the kit accepted before authenticating
        if self._closed:
            # As the server does for a gone client: Starlette turns it into WebSocketDisconnect.
            raise OSError("the WebSocket was closed by the auth kit")
        if message["type"] == "websocket.close":
            self._closed = True
        await self._send(message)

    # -- the kit's side -----------------------------------------------------------------
    async def _read(self) -> None:
        while True:
            message = await self._receive()
            token = _authenticate_token(message)
            if token is not None:
                await self._renew(token)
                continue
            await self._inbox.put(message)
            if message["type"] == "websocket.disconnect":
                self._closed = True
                return

    async def _renew(self, token: str) -> None:
        current = self.principal
        if current is None:  # not authenticated yet: renewals start after the first token
            return
        try:
            fresh = await self._authenticate(token)
        except Unavailable:
            # Not the client's fault: it may try again before expiry.
            await self._send_json({"type": "token_rejected", "error": "issuer_unavailable"})
            return
        except AuthError:
            self.close_soon(*AUTHENTICATION_REQUIRED)
            return
        same_session = (fresh.session_id, fresh.user_id) == (current.session_id, current.user_id)
        if not same_session or fresh.expires_at <= current.expires_at:
            self.close_soon(*AUTHENTICATION_REQUIRED)
            return
        self.principal = fresh
        self.scope[PRINCIPAL_SCOPE_KEY] = fresh
        self._renewed.set()
        await self._send_json({"type": "token_renewed", "expires_at": fresh.expires_at})

    async def _watch_expiry(self) -> None:
        while not self._closed:
            principal = self.principal
            if principal is None:
                return
            self._renewed.clear()
            warn_at = principal.expires_at - expiry_margin(principal, self._margin)
            if await self._renewal_before(warn_at):
                continue
            await self._send_json({"type": "token_expiring", "expires_at": principal.expires_at})
            if await self._renewal_before(principal.expires_at):
                continue
            await self._close(*TOKEN_EXPIRED)
            return

    async def _renewal_before(self, deadline: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._renewed.wait(), timeout=max(deadline - time.time(), 0))
            return True
        return False

    def close_soon(self, code: int, reason: str) -> None:
        if not self._closed:
            task = asyncio.get_running_loop().create_task(self._close(code, reason))
            self._tasks.append(task)

    async def _close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        logger.info("authsvc_kit.websocket_closed", extra={"code": code, "reason": reason})
        with contextlib.suppress(OSError, RuntimeError):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})
        # The application's next receive ends its loop as a client's close would.
        with contextlib.suppress(asyncio.QueueFull):
            self._inbox.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})

    async def _send_json(self, body: dict[str, Any]) -> None:
        if not self._closed:
            with contextlib.suppress(OSError, RuntimeError):
                await self._send({"type": "websocket.send", "text": json.dumps(body)})


def _authenticate_token(message: Message) -> str | None:
    """The token of an `authenticate` message, or None for any other message."""
    if message["type"] != "websocket.receive" or not message.get("text"):
        return None
    try:
        body = json.loads(message["text"])
    except ValueError:
        return None
    if not isinstance(body, dict) or body.get("type") != "authenticate":
        return None
    token = body.get("token")
    return token if isinstance(token, str) else ""


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return str(token.strip())
    return None
