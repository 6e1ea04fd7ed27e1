"""A real WebSocket client (the `websockets` package) for the notes service's /ws, and the
server side of one ASGI WebSocket connection for tests that drive the kit in process."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import Message, Scope
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

# The client's own logger, above DEBUG: at DEBUG it logs the handshake's Authorization header.
_QUIET = logging.getLogger("tests.downstream.wsclient")
_QUIET.setLevel(logging.INFO)


def ws_url(http_url: str) -> str:
    return http_url.replace("http://", "ws://", 1) + "/ws"


async def open_socket(
    base: str, token: str | None = None, *, header: bool = True
) -> ClientConnection:
    """Authenticated by the handshake header, or (header=False) by the first message."""
    headers = {"Authorization": f"Bearer {token}"} if token and header else None
    socket = await connect(ws_url(base), additional_headers=headers, open_timeout=5, logger=_QUIET)
    if token and not header:
        await socket.send(json.dumps({"type": "authenticate", "token": token}))
    return socket


async def next_message(socket: ClientConnection, within: float = 5) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), within))
    return message


async def until_type(socket: ClientConnection, kind: str, within: float = 5) -> dict[str, Any]:
    deadline = time.monotonic() + within
    while True:
        message = await next_message(socket, max(deadline - time.monotonic(), 0.01))
        if message.get("type") == kind:
            return message


@dataclass
class Closed:
    code: int
    reason: str
    at: float  # time.monotonic() when the close arrived
    messages: list[dict[str, Any]]


async def until_closed(socket: ClientConnection, within: float = 10) -> Closed:
    """Read until the server closes; what it sent before, and its close code and reason."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + within
    try:
        while True:
            remaining = deadline - time.monotonic()
            messages.append(json.loads(await asyncio.wait_for(socket.recv(), max(remaining, 0.01))))
    except ConnectionClosed as closed:
        frame = closed.rcvd
        assert frame is not None, "the connection dropped without a close frame"
        return Closed(frame.code, frame.reason, time.monotonic(), messages)


class AsgiClient:
    """The server side of one ASGI WebSocket connection, driven by the test (in process)."""

    def __init__(self, token: str | None) -> None:
        self.to_app: asyncio.Queue[Message] = asyncio.Queue()
        self.from_app: asyncio.Queue[Message] = asyncio.Queue()
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        self.scope: Scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "path": "/ws",
            "raw_path": b"/ws",
            "query_string": b"",
            "headers": headers,
            "scheme": "ws",
            "server": ("127.0.0.1", 80),
            "client": ("127.0.0.1", 5000),
            "subprotocols": [],
        }

    async def receive(self) -> Message:
        return await self.to_app.get()

    async def send(self, message: Message) -> None:
        await self.from_app.put(message)

    async def next_sent(self, kind: str, within: float) -> Message:
        deadline = time.monotonic() + within
        while True:
            message = await asyncio.wait_for(
                self.from_app.get(), max(deadline - time.monotonic(), 0.01)
            )
            if message["type"] == kind:
                return message
