"""A back-channel logout receiver for tests: a tiny ASGI app served by uvicorn on a free port
in the test's own event loop. It records every request it answers, and can be told to answer
another status, to hang, or to stop (connections refused) and start again on the same port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs

import jwt
import uvicorn
from starlette.types import Receive, Scope, Send

from tests.support.servers import free_port


@dataclass(frozen=True, slots=True)
class Received:
    path: str
    content_type: str
    form: dict[str, list[str]]
    arrived: float  # time.monotonic()


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    status: int = 200
    hang: bool = False
    # Only requests whose path ends with this hang (with `hang`); None: every request.
    hang_only: str | None = None
    hanging: int = 0  # requests being held now
    received: list[Received] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None
    _released: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/backchannel-logout"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if self.hang and (self.hang_only is None or scope["path"].endswith(self.hang_only)):
            self.hanging += 1
            try:
                await self._released.wait()
            finally:
                self.hanging -= 1
        headers = dict(scope["headers"])
        self.received.append(
            Received(
                path=scope["path"],
                content_type=headers.get(b"content-type", b"").decode(),
                form=parse_qs(body.decode()),
                arrived=time.monotonic(),
            )
        )
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def tokens(self) -> list[str]:
        return [token for r in self.received for token in r.form.get("logout_token", [])]

    def about(self, *session_ids: object) -> list[Received]:
        """The arrivals whose logout token names one of these sessions: the run's database
        holds other tests' messages too, and a worker delivers any of them that fall due."""
        wanted = {str(sid) for sid in session_ids}
        return [r for r in self.received if _session_of(r) in wanted]

    async def start(self) -> None:
        config = uvicorn.Config(
            self,
            host="127.0.0.1",
            port=self.port,
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        deadline = time.monotonic() + 10
        while not self._server.started:
            if self._task.done() or time.monotonic() > deadline:
                raise RuntimeError("the receiver did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._released.set()  # a hanging request is answered, so the server can close
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        self._server = self._task = None
        self._released = asyncio.Event()

    def release(self) -> None:
        """End the hang: requests waiting are answered, later ones are answered at once."""
        self.hang = False
        self._released.set()


Condition = Callable[[], bool | Awaitable[bool]]


async def eventually(
    condition: Condition, *, within: float = 10.0, what: str = "condition"
) -> None:
    """Wait until `condition()` (a function, possibly async) is true, checking every 10 ms."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


def _session_of(arrival: Received) -> str | None:
    [token] = arrival.form.get("logout_token", [None])
    if token is None:
        return None
    sid: str | None = jwt.decode(token, options={"verify_signature": False}).get("sid")
    return sid
