"""The HTTP/1.1 protocol `python -m app serve` runs: uvicorn's httptools protocol with a limit on
the size of a request's head (its request line and headers).

uvicorn's httptools protocol, the one it picks when httptools is installed, has no such limit:
one request with a 64 MB header was buffered whole and answered 200 (the process grew by about
120 MB and /healthz stalled for 2 s while the parser's header buffer grew). Its h11 protocol has
one (`h11_max_incomplete_event_size`) but answers it with 400, and h11 costs throughput.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.core.errors import error_body

logger = logging.getLogger("app.http")

# The default of MAX_REQUEST_HEADER_BYTES, as h11's and Node's: room for a token, our cookies
# and a gateway's headers many times over.
DEFAULT_MAX_HEAD_BYTES = 16 * 1024
# How long a refused connection is still read (and the bytes dropped) after the answer, so that
# the client reads the 431 instead of a reset (RFC 9112 section 9.6, "Tear-down").
LINGER_SECONDS = 2.0

_STATUS_LINE = b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
_BODY = json.dumps(error_body("headers_too_large", "Request line and headers too large.")).encode()
_HEADERS = (
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_BODY)).encode() + b"\r\n"
    b"x-content-type-options: nosniff\r\n"
    b"connection: close\r\n"
)


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """Refuses a request whose head exceeds the limit with 431 `headers_too_large` and closes the
    connection, having given the parser at most the limit's worth of that head.

    The limit is uvicorn's own setting for it under h11, `h11_max_incomplete_event_size` (the
    one place uvicorn carries a head limit to every worker's connections); `serve` sets it from
    MAX_REQUEST_HEADER_BYTES.

    The count of a head starts with the connection's first read and, after each request, with
    the read that follows it. Bytes after a request's end within the same read (a pipelined
    request's start) are fed uncounted: at most one read (256 KiB), and the reads after them
    count again.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.max_head_bytes = config.h11_max_incomplete_event_size or DEFAULT_MAX_HEAD_BYTES
        self._reading_head = True
        self._head_room = self.max_head_bytes  # bytes the current head may still take
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: dropped
        while self._reading_head and len(data) >= self._head_room:
            # Feed what the head may still take: whether it ends there decides about the rest.
            room, self._head_room = self._head_room, 0
            super().data_received(data[:room])
            data = data[room:]
            if self.transport.is_closing():  # refused by the parser (400)
                return
            if self._reading_head and self._head_room == 0:  # the same head, out of room
                self._refuse_head()
                return
        if self._reading_head:
            self._head_room -= len(data)
        if data:
            super().data_received(data)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._head_room = self.max_head_bytes

    def _refuse_head(self) -> None:
        logger.warning("http.headers_too_large", extra={"limit": self.max_head_bytes})
        content = [_STATUS_LINE]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [_HEADERS, b"\r\n", _BODY]
        self.transport.write(b"".join(content))
        self._refused = True
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # Closing now, with the rest of the head still arriving, would answer it with a reset
        # that can destroy the 431 in the client's buffers before it is read. So: end our side
        # (FIN after the answer), drop what still comes, close when the client does (its EOF
        # closes the transport) or after LINGER_SECONDS.
        self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
