"""The HTTP/1.1 protocol `python -m app serve` runs: uvicorn's httptools protocol with limits on
how much of a request it reads: the head (request line and headers), and what follows the head.

uvicorn's httptools protocol, the one it picks when httptools is installed, has no such limit:
one request with a 64 MB header was buffered whole and answered 200 (the process grew by about
120 MB and /healthz stalled for 2 s while the parser's header buffer grew). A chunked request's
trailer section was worse: httptools buffers a trailer field like a header (its value grown by
`bytes +=`, so quadratic in time: a 64 MiB one stalled /healthz for 3.8 s), and uvicorn appends
trailer fields to the request's headers, where the application took a trailer sent in the same
packet for a header that a front proxy never saw. Its h11 protocol has a head limit
(`h11_max_incomplete_event_size`) but answers it with 400, and h11 costs throughput.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from app.core.errors import error_body
from app.core.settings import get_settings

logger = logging.getLogger("app.http")

# The default of MAX_REQUEST_HEADER_BYTES, as h11's and Node's: room for a token, our cookies
# and a gateway's headers many times over.
DEFAULT_MAX_HEAD_BYTES = 16 * 1024
# How long a refused connection is still read (and the bytes dropped) after the answer, so that
# the client reads the answer instead of a reset (RFC 9112 section 9.6, "Tear-down").
LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class Refusal:
    """An answer the protocol writes itself, in the application's error envelope."""

    code: str
    status_line: bytes
    end: bytes  # after the server's default headers: ours, and the body

    @classmethod
    def of(cls, status_line: bytes, code: str, message: str) -> Refusal:
        body = json.dumps(error_body(code, message)).encode()
        end = (
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"x-content-type-options: nosniff\r\n"
            b"connection: close\r\n\r\n" + body
        )
        return cls(code, status_line, end)


HEAD_TOO_LARGE = Refusal.of(
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
    "headers_too_large",
    "Request line and headers too large.",
)
# The body limit's own answer (app/core/middleware.py BodyLimit).
MESSAGE_TOO_LARGE = Refusal.of(
    b"HTTP/1.1 413 Content Too Large\r\n", "payload_too_large", "Request body too large."
)
TRAILER_REFUSED = Refusal.of(
    b"HTTP/1.1 400 Bad Request\r\n", "trailers_not_allowed", "Trailer fields are not accepted."
)


class TrailerRefused(Exception):
    """Raised from the parser's header callback at a trailer field, to stop the parser there:
    nothing after it in the same read (a pipelined request's start) is parsed."""


class HeadLimitedHttpToolsProtocol(HttpToolsProtocol):
    """Reads at most so much of each request:

    - its head, up to the head limit; beyond it 431 `headers_too_large`;
    - after its head, up to twice MAX_BODY_BYTES plus the head limit: the body, as much again
      of chunk framing (chunks of 5 bytes or more of a full-size body fit) and room to see a
      trailer; beyond it 413 `payload_too_large`. The envelope's BodyLimit refuses a body over
      MAX_BODY_BYTES as it arrives: an honest client gets that 413 first, and its connection
      only ends if it sends past this limit (httptools would otherwise buffer a trailer field
      for as long as it came);
    - no trailer field: 400 `trailers_not_allowed` (it never reaches the request's headers).

    A refusal ends the connection: nothing after it is parsed, the answers of requests
    pipelined before it are written first, then the refusal, unless the refused request's own
    answer has started (then that answer stands, or is cut off), then a lingering close.

    The head limit is uvicorn's own setting for it under h11, `h11_max_incomplete_event_size`
    (the one place uvicorn carries a head limit to every worker's connections); `serve` sets it
    from MAX_REQUEST_HEADER_BYTES. The body limit is the application's settings' (the same
    `get_settings()` the application factory reads in each worker).

    The parser is given at most the room of the part it is reading (head, or the rest of the
    message), so a refused part was never given more than its room. The count of a part starts
    with the read in which the previous part ended: the bytes of a part that follow its start
    in that read are counted as the previous part's (at most that part's room).
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
        self.max_rest_bytes = 2 * get_settings().max_body_bytes + self.max_head_bytes
        self._reading_head = True
        self._room = self.max_head_bytes  # bytes the part being read may still take
        # The cycle of the request before the one being read, once its head is read.
        self._earlier: RequestResponseCycle | None = None
        self._refused = False
        self._refusal = b""  # written once `_answer_after`'s response is complete
        self._answer_after: RequestResponseCycle | None = None
        self._trailer_refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: dropped
        while len(data) >= self._room:
            # Feed what this part may still take: whether it ends there decides about the rest.
            room, self._room = self._room, 0
            super().data_received(data[:room])
            data = data[room:]
            if self._done_reading():
                return
            if self._room == 0:  # the same part, out of room
                self._refuse(HEAD_TOO_LARGE if self._reading_head else MESSAGE_TOO_LARGE)
                return
        self._room -= len(data)
        if data:
            super().data_received(data)

    def _done_reading(self) -> bool:
        """Refused (a trailer), refused by the parser (400), or handed to the WebSocket
        protocol: the parser takes no more of this connection's bytes."""
        return (
            self._refused
            or self.transport.is_closing()
            or self.transport.get_protocol() is not self
        )

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._reading_head:
            self._trailer_refused = True
            raise TrailerRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._earlier = self.cycle
        super().on_headers_complete()
        self._reading_head = False
        self._room = self.max_rest_bytes

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_head = True
        self._room = self.max_head_bytes

    def send_400_response(self, msg: str) -> None:
        # uvicorn's answer to a parser error, which our raise at a trailer is too.
        if self._trailer_refused:
            self._refuse(TRAILER_REFUSED)
        else:
            super().send_400_response(msg)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._answer_after is not None and self._answer_after.response_complete:
            self._answer_and_close()

    def _refuse(self, refusal: Refusal) -> None:
        """Refuses the request being read, after the answers of the requests before it."""
        logger.warning(
            "http.request_refused",
            extra={
                "code": refusal.code,
                "head_limit": self.max_head_bytes,
                "rest_limit": self.max_rest_bytes,
            },
        )
        self._refused = True
        content = [refusal.status_line]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        self._refusal = b"".join([*content, refusal.end])
        before: RequestResponseCycle | None
        if self._reading_head:
            before = self.cycle
        else:  # its head was read: it has a cycle, which goes no further
            before = self._earlier
            self._abandon(self.cycle)
        if before is None or before.response_complete:
            self._answer_and_close()
        else:  # pipelined: on_response_complete answers once `before` is answered
            self._answer_after = before

    def _abandon(self, cycle: RequestResponseCycle) -> None:
        if self.pipeline and self.pipeline[0][0] is cycle:
            self.pipeline.popleft()  # queued behind an earlier request: never started
        if cycle.response_started:
            self._refusal = b""  # its application answered: that answer stands (or is cut)
        if not cycle.response_complete:
            # Its application, if running, reads a disconnect; whatever it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()

    def _answer_and_close(self) -> None:
        self._answer_after = None
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        if self._refusal:
            self.transport.write(self._refusal)
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        # Closing now, with the rest of the request still arriving, would answer it with a
        # reset that can destroy the answer in the client's buffers before it is read. So: end
        # our side (FIN after the answer), drop what still comes, close when the client does
        # (its EOF closes the transport) or after LINGER_SECONDS.
        self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
