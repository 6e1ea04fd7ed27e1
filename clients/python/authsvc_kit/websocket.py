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
later exp). The kit consumes `authenticate` messages: the application never sees them. Only a
text frame of at most MAX_AUTHENTICATE_MESSAGE characters that looks like a JSON object naming
"authenticate" is parsed: a client cannot make the kit parse megabytes (nor anything before it
has authenticated), and a larger first message closes the connection.

DPoP-bound tokens (`cnf.jkt`): the handshake carries `Authorization: DPoP <token>` and a `DPoP`
proof header, or (browsers) the message carries it: `{"type": "authenticate", "token": ...,
"proof": "<DPoP proof>"}`, first and at each renewal. The proof names `htm` GET and `htu` the
socket's URL (wss://host/path or https://host/path: compared as the same), with the `ath` of
the token it comes with and a fresh `jti`. A bound token without a valid proof closes 4400
`invalid_dpop_proof`.

Close codes: 4400 `authentication_required` (no, invalid or mismatched token at the start or in
a renewal), 4400 `invalid_dpop_proof` (a bound token without a valid proof), 4401
`token_expired` (no fresh token in time: refresh and reconnect), 4403
`session_revoked` (back-channel logout, or a revoked session's token at the start or in a
renewal: do not reconnect), 4403 `user_token_required` (a service client's token where a user
is needed), 4429 `too_many_connections` (this session already holds `ws_max_per_session`
sockets), 1013 `issuer_unavailable` (keys or revocations cannot be checked: try again later),
1013 `try_again_later` (this process holds `ws_max_pending` unauthenticated or
`ws_max_connections` sockets).

Once the kit has closed a connection the application's next receive is a
`websocket.disconnect` (ahead of any message still queued, which is dropped): nothing the client
sent reaches the application after a revocation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from authsvc_kit.dpop import MAX_PROOF_LENGTH, Presentation, presentation
from authsvc_kit.errors import AuthError, InvalidDPoPProof, SessionRevoked, Unavailable
from authsvc_kit.principal import Principal
from authsvc_kit.revocation import Revocation
from authsvc_kit.verifier import MAX_TOKEN_LENGTH

logger = logging.getLogger("authsvc_kit.websocket")
PRINCIPAL_SCOPE_KEY = "authsvc.principal"
AUTHENTICATION_REQUIRED = (4400, "authentication_required")
INVALID_DPOP_PROOF = (4400, "invalid_dpop_proof")
TOKEN_EXPIRED = (4401, "token_expired")
SESSION_REVOKED = (4403, "session_revoked")
USER_TOKEN_REQUIRED = (4403, "user_token_required")
TOO_MANY_CONNECTIONS = (4429, "too_many_connections")
ISSUER_UNAVAILABLE = (1013, "issuer_unavailable")
TRY_AGAIN_LATER = (1013, "try_again_later")
_QUEUE_SIZE = 256  # messages the application has not read yet; beyond it reading pauses
# The largest text frame that may be an `authenticate` message: a token of the longest length
# the verifier takes and a DPoP proof, plus room for the JSON around them.
MAX_AUTHENTICATE_MESSAGE = MAX_TOKEN_LENGTH + MAX_PROOF_LENGTH + 1024

Authenticate = Callable[[str, Presentation | None], Awaitable[Principal]]
CloseCode = tuple[int, str]


def close_code(error: AuthError) -> CloseCode:
    """The close code and reason for a refused token (what the HTTP status says there)."""
    if isinstance(error, Unavailable):
        return ISSUER_UNAVAILABLE
    if isinstance(error, SessionRevoked):
        return SESSION_REVOKED
    if isinstance(error, InvalidDPoPProof):
        return INVALID_DPOP_PROOF
    if error.status == 403:
        return (4403, error.code)
    return AUTHENTICATION_REQUIRED


class SocketRegistry:
    """The open connections, indexed by session and by user to close them on a revocation
    without a scan, and the caps on how many there may be."""

    def __init__(
        self,
        *,
        max_per_session: int = 32,
        max_pending: int = 1_000,
        max_connections: int = 10_000,
        revoked: Callable[[Principal], bool] = lambda _principal: False,
    ) -> None:
        self._max_per_session = max_per_session
        self._max_pending = max_pending
        self._max_connections = max_connections
        self._revoked = revoked
        self._pending: set[WebSocketSession] = set()
        self._by_sid: dict[str, set[WebSocketSession]] = {}
        self._by_sub: dict[str, set[WebSocketSession]] = {}
        self._open = 0

    def admit(self, session: WebSocketSession) -> CloseCode | None:
        """Before authentication: the refusal, or None (the session then counts as pending)."""
        pending = len(self._pending)
        if pending >= self._max_pending or pending + self._open >= self._max_connections:
            return TRY_AGAIN_LATER
        self._pending.add(session)
        return None

    def add(self, session: WebSocketSession, principal: Principal) -> CloseCode | None:
        """Authenticated: the refusal, or None (the session is then open and indexed)."""
        self._pending.discard(session)
        # A revocation heard while authenticate() was awaiting (a Redis read, a live check)
        # found no socket to close: it is in the local store by now. From here on the
        # registry hears every revocation (no await between this check and the insertion).
        if self._revoked(principal):
            return SESSION_REVOKED
        peers = self._by_sid.get(principal.session_id or "", set())
        if principal.session_id is not None and len(peers) >= self._max_per_session:
            return TOO_MANY_CONNECTIONS
        if self._open >= self._max_connections:
            return TRY_AGAIN_LATER
        if principal.session_id is not None:
            self._by_sid.setdefault(principal.session_id, set()).add(session)
        self._by_sub.setdefault(principal.user_id, set()).add(session)
        session.indexed = principal
        self._open += 1
        return None

    def discard(self, session: WebSocketSession) -> None:
        self._pending.discard(session)
        indexed, session.indexed = session.indexed, None
        if indexed is None:
            return
        self._open -= 1
        if indexed.session_id is not None:
            _remove(self._by_sid, indexed.session_id, session)
        _remove(self._by_sub, indexed.user_id, session)

    def __len__(self) -> int:
        return self._open

    @property
    def pending(self) -> int:
        return len(self._pending)

    def on_revocation(self, revocation: Revocation) -> None:
        # Called from the receiver or the Redis listener, in the event loop: closing is
        # scheduled at once, so the socket is closed within milliseconds.
        if revocation.sid is not None:
            sessions = self._by_sid.get(revocation.sid, set())
        else:
            sessions = self._by_sub.get(revocation.sub or "", set())
        for session in list(sessions):
            if session.principal is not None and revocation.covers(session.principal):
                session.close_soon(*SESSION_REVOKED)


def _remove(index: dict[str, set[WebSocketSession]], key: str, session: WebSocketSession) -> None:
    sessions = index.get(key)
    if sessions is not None:
        sessions.discard(session)
        if not sessions:
            del index[key]


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
        url: Callable[[Scope], str],
        registry: SocketRegistry,
        auth_timeout: float,
        expiry_margin: float,
    ) -> None:
        self.scope = dict(scope)
        self._receive = receive
        self._send = send
        self._authenticate = authenticate
        self._url = url
        self._registry = registry
        self._auth_timeout = auth_timeout
        self._margin = expiry_margin
        self.principal: Principal | None = None
        self.indexed: Principal | None = None  # as the registry indexed it (sid and sub)
        self._inbox: asyncio.Queue[Message] = asyncio.Queue(_QUEUE_SIZE)
        self._closed = False  # no more sends: the kit or the application closed
        self._ended: Message | None = None  # the kit closed: the application's last message
        self._connect: Message | None = None
        self._renewed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def run(self, app: ASGIApp) -> None:
        self._connect = await self._receive()
        if self._connect["type"] != "websocket.connect":
            return
        await self._send({"type": "websocket.accept"})
        try:
            await self._serve(app)
        finally:
            self._registry.discard(self)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, app: ASGIApp) -> None:
        refusal = self._registry.admit(self)
        if refusal is not None:
            await self._close(*refusal)
            return
        try:
            principal = await self._first_principal()
        except AuthError as exc:
            await self._close(*close_code(exc))
            return
        except TimeoutError:
            await self._close(*AUTHENTICATION_REQUIRED)
            return
        refusal = self._registry.add(self, principal)
        if refusal is not None:
            await self._close(*refusal)
            return
        self.principal = principal
        self.scope[PRINCIPAL_SCOPE_KEY] = principal
        self._tasks += [
            asyncio.create_task(self._read(), name="authsvc-kit-ws-read"),
            asyncio.create_task(self._watch_expiry(), name="authsvc-kit-ws-expiry"),
        ]
        await app(self.scope, self._app_receive, self._app_send)

    async def _first_principal(self) -> Principal:
        presented = presentation(self.scope, self._url)
        if presented is not None:
            return await self._authenticate(*presented)
        async with asyncio.timeout(self._auth_timeout):
            message = await self._receive()
        credentials = _authenticate_token(message)
        if credentials is None:
            raise AuthError("The first message must be {type: authenticate, token}.")
        return await self._authenticate(*self._in_band(credentials))

    def _in_band(self, credentials: tuple[str, str | None]) -> tuple[str, Presentation]:
        """An `authenticate` message's token, presented as DPoP when it came with a proof."""
        token, proof = credentials
        scheme: Literal["bearer", "dpop"] = "bearer" if proof is None else "dpop"
        return token, Presentation(scheme, proof, "GET", self._url(self.scope))

    # -- what the application sees ------------------------------------------------------
    async def _app_receive(self) -> Message:
        if self._connect is not None:
            message, self._connect = self._connect, None
            return message
        if self._ended is not None:
            return self._ended
        message = await self._inbox.get()
        # Woken by the close (or by a message the reader queued just before it): the close wins.
        return self._ended if self._ended is not None else message

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
            if self._ended is not None:
                # Closed by the kit: nothing more for the application, whatever arrives.
                if message["type"] == "websocket.disconnect":
                    return
                continue
            credentials = _authenticate_token(message)
            if credentials is not None:
                await self._renew(credentials)
                continue
            await self._inbox.put(message)
            if message["type"] == "websocket.disconnect":
                self._closed = True
                return

    async def _renew(self, credentials: tuple[str, str | None]) -> None:
        current = self.principal
        if current is None:  # not authenticated yet: renewals start after the first token
            return
        try:
            fresh = await self._authenticate(*self._in_band(credentials))
        except Unavailable:
            # Not the client's fault: it may try again before expiry.
            await self._send_json({"type": "token_rejected", "error": "issuer_unavailable"})
            return
        except AuthError as exc:
            self.close_soon(*close_code(exc))
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
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(deadline - time.time(), 0)):
                await self._renewed.wait()
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
        # The application's next receive ends its loop as a client's close would, ahead of
        # anything still queued: after a revocation nothing more reaches it.
        self._ended = {"type": "websocket.disconnect", "code": code, "reason": reason}
        while not self._inbox.empty():
            self._inbox.get_nowait()
        self._inbox.put_nowait(self._ended)  # wakes a receive waiting on the empty queue
        logger.info("authsvc_kit.websocket_closed", extra={"code": code, "reason": reason})
        with contextlib.suppress(OSError, RuntimeError):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def _send_json(self, body: dict[str, Any]) -> None:
        if not self._closed:
            with contextlib.suppress(OSError, RuntimeError):
                await self._send({"type": "websocket.send", "text": json.dumps(body)})


def _authenticate_token(message: Message) -> tuple[str, str | None] | None:
    """The token (and DPoP proof, if any) of an `authenticate` message, or None for any other
    message. Cheap checks
    first: a frame too large to carry a token, or not a JSON object naming "authenticate",
    is never parsed here (whatever its size or nesting)."""
    if message["type"] != "websocket.receive":
        return None
    text = message.get("text")
    if not text or len(text) > MAX_AUTHENTICATE_MESSAGE:
        return None
    if not text.lstrip().startswith("{") or '"authenticate"' not in text:
        return None
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):  # a deep nesting is a RecursionError, not a ValueError
        return None
    if not isinstance(body, dict) or body.get("type") != "authenticate":
        return None
    token, proof = body.get("token"), body.get("proof")
    return (token if isinstance(token, str) else ""), (proof if isinstance(proof, str) else None)


def bearer_token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return str(token.strip())
    return None
