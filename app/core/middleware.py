"""Pure ASGI plumbing middleware: request ids, metrics, cache and security headers; body size
limits."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping, Sequence

from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.client import ARRIVED_AT
from app.core.clock import Clock
from app.core.errors import error_body
from app.core.logging import request_id_var
from app.core.metrics import record_request

logger = logging.getLogger("app.http")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,128}$")
_X_REQUEST_ID = b"x-request-id"


class RequestIds:
    """32 random hex digits, cut from a buffer of random bytes filled by one system call per
    256 ids (a getrandom call per request was a measurable share of a bare request). Random,
    not counted: an echoed counter would tell any client how busy each worker is. A forked
    child refills its own buffer. Used from the event loop's thread only (no lock)."""

    _BUFFER = 4096

    def __init__(self) -> None:
        self.refill()
        os.register_at_fork(after_in_child=self.refill)

    def refill(self) -> None:
        self._random = os.urandom(self._BUFFER)
        self._offset = 0

    def next(self) -> str:
        if self._offset == self._BUFFER:
            self.refill()
        start = self._offset
        self._offset = start + 16
        return self._random[start : start + 16].hex()


_request_ids = RequestIds()


_NO_STORE = ((b"cache-control", b"no-store"), (b"pragma", b"no-cache"))
_CACHE_HEADERS = frozenset(name for name, _ in _NO_STORE)

_NOSNIFF = (b"x-content-type-options", b"nosniff")


def _page_headers(csp: str) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"content-security-policy", csp.encode()), _NOSNIFF, (b"x-frame-options", b"DENY"))


class RequestEnvelopeMiddleware:
    """What every HTTP request gets, in one layer (each layer costs every request a call, and
    with a send wrapper an await per message: docs/performance.md):

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
    ) -> None:
        self.app = app
        self.clock = clock or Clock()
        self.no_store_prefixes = no_store_prefixes
        self.security = (_NOSNIFF,)
        self.page_security = {
            path: _page_headers(csp) for path, csp in (page_policies or {}).items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[ARRIVED_AT] = self.clock.now()
        request_id = incoming_request_id(scope) or _request_ids.next()
        id_header = (_X_REQUEST_ID, request_id.encode())
        path = route_path(scope)
        no_store = path.startswith(self.no_store_prefixes)
        security = self.page_security.get(path, self.security)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_envelope(message: Message) -> None:
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
            await send(message)

        try:
            await self.app(scope, receive, send_with_envelope)
        finally:
            elapsed = time.perf_counter() - started
            record_request(scope, status, elapsed)
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
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """Refuses bodies over `max_bytes` with 413 before the application reads them."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths, chunked = _framing(scope)
        # ASCII digits only: str.isdigit() takes "²", which int() refuses (a 500).
        if lengths and not all(
            n.isascii() and n.isdigit() and int(n) <= self.max_bytes for n in lengths
        ):
            response = JSONResponse(
                error_body("payload_too_large", "Request body too large."), status_code=413
            )
            await response(scope, receive, send)
            return
        if len(lengths) == 1 and not chunked and scope.get("http_version") in ("1.0", "1.1"):
            # HTTP/1 framing ends this body after Content-Length bytes (RFC 9112 section 6.3),
            # and the server enforces it: nothing to count. Chunked bodies, bodies of unknown
            # length, and requests with several Content-Length headers are counted.
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413)
            return message

        await self.app(scope, limited_receive, send)


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


def route_path(scope: Scope) -> str:
    """The path as the application's routes see it, without a deployment prefix (root_path)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path != root:
        return path[len(root) :]
    return path


def _framing(scope: Scope) -> tuple[list[str], bool]:
    """(every Content-Length value as sent, whether a Transfer-Encoding was sent), one pass."""
    lengths, chunked = [], False
    for key, value in scope["headers"]:
        if key == b"content-length":
            lengths.append(value.decode("latin-1"))
        elif key == b"transfer-encoding":
            chunked = True
    return lengths, chunked


def incoming_request_id(scope: Scope) -> str | None:
    """The X-Request-ID the client sent, if it is sane enough to log and echo."""
    incoming = _header(scope, _X_REQUEST_ID)
    return incoming if incoming and _REQUEST_ID.fullmatch(incoming) else None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None
