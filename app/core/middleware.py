"""Pure ASGI plumbing middleware: the request envelope (admission, request ids, metrics, cache
and security headers, body size limits) and CORS."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.admission import EXEMPT_PATHS, Admission, send_overloaded
from app.core.client import ARRIVED_AT
from app.core.clock import Clock
from app.core.error_handlers import unexpected_error_response
from app.core.errors import error_body
from app.core.logging import request_id_var
from app.core.metrics import record_request

logger = logging.getLogger("app.http")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
_X_REQUEST_ID = b"x-request-id"


class RequestIds:
    """32 random hex digits each, cut from random bytes read by one system call per 256 ids
    (a getrandom call per request was a measurable share of a bare request), as the text and
    the header value. Random, not counted: an echoed counter would tell any client how busy
    each worker is. A forked child refills its own. Used from the event loop's thread only
    (no lock)."""

    _BATCH = 256

    def __init__(self) -> None:
        self.refill()
        os.register_at_fork(after_in_child=self.refill)

    def refill(self) -> None:
        hexed = os.urandom(16 * self._BATCH).hex()
        ids = (hexed[i : i + 32] for i in range(0, len(hexed), 32))
        self._ids = [(text, text.encode()) for text in ids]

    def next(self) -> tuple[str, bytes]:
        if not self._ids:
            self.refill()
        return self._ids.pop()


_request_ids = RequestIds()


@dataclass(frozen=True, slots=True)
class GatePass:
    """A request a gate lets through; `after`, if any, is awaited with the response's status
    once the response has been sent (and must not raise)."""

    after: Callable[[int], Awaitable[None]] | None = None


GO_ON = GatePass()


class Gate(Protocol):
    """A check the envelope runs on every request, last, before the application: the identity
    check (app.auth.middleware). A layer of its own would cost every request a call and a
    coroutine; a gate costs a request it has nothing to check one function call."""

    def needed(self, path: str, authorization: bool) -> bool:
        """Whether the request to `path` (with an Authorization header or not) is checked."""
        ...

    async def check(self, scope: Scope, receive: Receive, send: Send, path: str) -> GatePass | None:
        """None: the gate has answered the request itself (a refusal)."""
        ...


_NO_STORE = ((b"cache-control", b"no-store"), (b"pragma", b"no-cache"))
_CACHE_HEADERS = frozenset(name for name, _ in _NO_STORE)

_NOSNIFF = (b"x-content-type-options", b"nosniff")


def _page_headers(csp: str) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"content-security-policy", csp.encode()), _NOSNIFF, (b"x-frame-options", b"DENY"))


class RequestEnvelopeMiddleware:
    """What every HTTP request gets, in one layer, the outermost (each layer costs every
    request a call and a coroutine: docs/performance.md):

    - admission (`admission`, app.core.admission): a slot among the requests in flight, or a
      503 at once; the probes (`EXEMPT_PATHS`) are never shed. First, so that a shed request
      costs as little as it can;
    - its body limit (`body_limit`): a body over it is refused with 413;
    - its gate (`gate`, last): the identity check, which may answer the request itself;
    - its arrival: the instant it reached the application, from the application's clock, in
      the scope (`app.core.client.arrival_of`), for rules measured from arrival;
    - a request id: a sane incoming `X-Request-ID` or a new one, bound to logs, echoed back;
    - its metrics: duration by method, route template and status;
    - under `no_store_prefixes`, whose responses may carry tokens, `Cache-Control: no-store`
      and `Pragma: no-cache` in place of any cache headers, so that no cache keeps them;
    - its security headers: `X-Content-Type-Options: nosniff` on every response, so that none
      is ever read as another type than it says; on the HTML pages (`page_policies`: path ->
      Content-Security-Policy, each listing what its page runs, and `frame-ancestors 'none'`)
      that policy and `X-Frame-Options: DENY` too. Not on the JSON answers: inert as documents,
      they would pay 3% of a bare request's throughput for two headers (docs/deploy.md). The
      one place that sets these headers: no route does.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        no_store_prefixes: tuple[str, ...],
        page_policies: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        admission: Admission | None = None,
        body_limit: BodyLimit | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.app = app
        self.timestamp = (clock or Clock()).timestamp
        self.admission = admission
        self.body_limit = body_limit
        self.gate = gate
        self.no_store_prefixes = no_store_prefixes
        self.security = (_NOSNIFF,)
        self.page_security = {
            path: _page_headers(csp) for path, csp in (page_policies or {}).items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # route_path(scope), its call saved when no root_path is set (the usual case).
        path = route_path(scope) if scope.get("root_path") else scope["path"]
        admission = self.admission
        if admission is not None and path in EXEMPT_PATHS:
            admission = None
        if admission is not None and not (admission.enter_now() or await admission.enter()):
            await send_overloaded(send, incoming_request_id(scope))
            return
        scope[ARRIVED_AT] = self.timestamp()
        # One pass over the headers for what this layer reads of them (inline: a call and a
        # tuple fewer on every request).
        incoming, lengths, chunked, authorization = None, [], False, False
        for key, value in scope["headers"]:
            if key == b"authorization":
                authorization = True
            elif key == b"x-request-id":
                incoming = incoming or value.decode("latin-1")
            elif key == b"content-length":
                lengths.append(value.decode("latin-1"))
            elif key == b"transfer-encoding":
                chunked = True
        if incoming is not None and _REQUEST_ID.fullmatch(incoming):
            request_id, id_value = incoming, incoming.encode()
        else:
            request_id, id_value = _request_ids.next()
        id_header = (_X_REQUEST_ID, id_value)
        no_store = path.startswith(self.no_store_prefixes)
        security = self.page_security.get(path, self.security)
        # Not reset afterwards: a server runs each request in a task of its own, whose context
        # the value cannot outlive (and a reset is a measurable share of a bare request).
        request_id_var.set(request_id)
        started = time.perf_counter()
        status = 0  # none sent yet

        # A plain function that returns send's awaitable, not a coroutine of its own: ASGI
        # asks only for an awaitable, and a coroutine per message was a quarter of the
        # stack's instructions per request (docs/performance.md).
        def send_with_envelope(message: Message) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", ())
                if no_store:
                    kept = [h for h in headers if h[0].lower() not in _CACHE_HEADERS]
                    message["headers"] = [*kept, id_header, *_NO_STORE, *security]
                else:
                    # Appended, not set: nothing else names these headers, and a header scan
                    # per response is a measurable share of a bare request.
                    message["headers"] = [*headers, id_header, *security]
            return send(message)

        body_limit, gate = self.body_limit, self.gate
        try:
            if body_limit is not None:
                limited = body_limit.admit(scope, receive, lengths, chunked)
                if limited is None:
                    await body_limit.refusal(scope, receive, send_with_envelope)
                    return
                receive = limited
            if gate is None or not gate.needed(path, authorization):
                await self.app(scope, receive, send_with_envelope)
            elif passed := await gate.check(scope, receive, send_with_envelope, path):
                await self.app(scope, receive, send_with_envelope)
                if passed.after is not None:
                    await passed.after(status)
        except Exception as exc:
            # What ServerErrorMiddleware does for the application, for the steps outside it
            # (this layer's own and the gate): a JSON 500 (503 for a database outage), unless
            # an answer has begun (ServerErrorMiddleware's own 500 re-raised, say): then the
            # server ends the connection and logs it.
            if status:
                raise
            await unexpected_error_response(exc)(scope, receive, send_with_envelope)
        finally:
            elapsed = time.perf_counter() - started
            if admission is not None:
                admission.leave(elapsed)
            record_request(scope, status or 500, elapsed)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "http.request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],  # never the query string: it may hold secrets
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 2),
                    },
                )


async def payload_too_large(scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(
        error_body("payload_too_large", "Request body too large."), status_code=413
    )
    await response(scope, receive, send)


class BodyLimit:
    """Bodies over `max_bytes` are refused with 413 before the application reads them: by
    `refusal` when a Content-Length says so, or as the application reads past the limit."""

    def __init__(self, max_bytes: int, refusal: ASGIApp = payload_too_large) -> None:
        self.max_bytes = max_bytes
        self.refusal = refusal

    def admit(
        self, scope: Scope, receive: Receive, lengths: list[str], chunked: bool
    ) -> Receive | None:
        """The receive to hand on, or None: refuse the request (with `refusal`). `lengths`:
        every Content-Length value as sent; `chunked`: whether a Transfer-Encoding was."""
        if lengths and not all(_at_most(n, self.max_bytes) for n in lengths):
            return None
        if len(lengths) == 1 and not chunked and scope.get("http_version") in ("1.0", "1.1"):
            # HTTP/1 framing ends this body after Content-Length bytes (RFC 9112 section 6.3),
            # and the server enforces it: nothing to count. Chunked bodies, bodies of unknown
            # length, and requests with several Content-Length headers are counted.
            return receive
        return self._counted(receive)

    def _counted(self, receive: Receive) -> Receive:
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413)
            return message

        return limited_receive


class CORSMiddlewareExcept(CORSMiddleware):
    """Starlette's CORS handling, except on `excluded_paths`: routes whose every answer must
    come from the route itself. Forward-auth is one: a gateway that forwards a preflight
    (`OPTIONS` with `Access-Control-Request-Method`) would otherwise get CORS's 200 and let an
    unauthenticated request through."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        excluded_paths: frozenset[str],
        allow_origins: Sequence[str],
        allow_credentials: bool,
        allow_methods: Sequence[str],
        allow_headers: Sequence[str],
        expose_headers: Sequence[str] = (),
    ) -> None:
        super().__init__(
            app,
            allow_origins=allow_origins,
            allow_credentials=allow_credentials,
            allow_methods=allow_methods,
            allow_headers=allow_headers,
            expose_headers=expose_headers,
        )
        self.excluded_paths = excluded_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and route_path(scope) in self.excluded_paths:
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def preflight_response(self, request_headers: Headers) -> Response:
        """A preflight is answered here, outside the request envelope: it gets the one header
        every answer carries all the same."""
        response = super().preflight_response(request_headers)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def route_path(scope: Scope) -> str:
    """The path as the application's routes see it, without a deployment prefix (root_path)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path != root:
        return path[len(root) :]
    return path


def _at_most(length: str, max_bytes: int) -> bool:
    """Whether a Content-Length value is a number no greater than `max_bytes`. ASCII digits
    only (str.isdigit() takes "²", which int() refuses), and no more of them than the bound
    has once leading zeros are gone (int() refuses over 4,300 digits: a padded value was a
    500)."""
    if not (length.isascii() and length.isdigit()):
        return False
    digits = length.lstrip("0") or "0"
    return len(digits) <= len(str(max_bytes)) and int(digits) <= max_bytes


def incoming_request_id(scope: Scope) -> str | None:
    """The X-Request-ID the client sent, if it is sane enough to log and echo."""
    incoming = _header(scope, _X_REQUEST_ID)
    return incoming if incoming and _REQUEST_ID.fullmatch(incoming) else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
