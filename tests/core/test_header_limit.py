"""MAX_REQUEST_HEADER_BYTES: `python -m app serve` refuses a request whose head (request line and
headers) is over it with 431 `headers_too_large`, before buffering the rest of the head
(app/core/http_protocol.py). Over real sockets to a real server, two workers as the container
runs: the test transport has no head to limit."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from app.core.settings import Settings
from tests.support.servers import uvicorn_server

pytestmark = pytest.mark.slow

LIMIT = 8192  # not the default (16 KiB): the setting must reach the workers
HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def port(sqlite_url: str) -> Iterator[int]:
    env = {"MAX_REQUEST_HEADER_BYTES": str(LIMIT)}
    with uvicorn_server(sqlite_url, serve=True, workers=2, env=env) as (base, _):
        port = urlsplit(base).port
        assert port is not None
        yield port


def _get(path: str = "/healthz", *, padding: int = 0, lines: int = 1) -> bytes:
    """A GET whose head is padded by `lines` headers of `padding` bytes each."""
    padded = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * padding) for i in range(lines))
    return b"GET %s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (path.encode(), padded if padding else b"")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, await reader.readexactly(length)


async def _exchange(port: int, *requests: bytes) -> list[tuple[int, bytes]]:
    """Each request in one write, on one connection, and its answer read before the next."""
    reader, writer = await asyncio.open_connection(HOST, port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            await writer.drain()
            answers.append(await asyncio.wait_for(_read_response(reader), 10))
    finally:
        writer.close()
    return answers


def _code(body: bytes) -> str:
    code: str = json.loads(body)["error"]["code"]
    return code


async def test_a_64_mb_header_is_refused_at_the_limit_not_buffered(port: int) -> None:
    """The header never ends: only a server that stops at the limit answers. The client is
    still sending when the 431 comes; the server drops the rest for a while (lingering close),
    where closing at once reset the connection and the client's writes failed before it had
    read the answer."""
    reader, writer = await asyncio.open_connection(HOST, port)

    async def push_64_mb_header() -> None:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
        chunk = b"a" * 65536
        for _ in range(1024):
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0)  # let the answer be read meanwhile

    pushing = asyncio.create_task(push_64_mb_header())
    try:
        status, body = await asyncio.wait_for(_read_response(reader), 10)
        assert (status, _code(body)) == (431, "headers_too_large")
        assert await asyncio.wait_for(reader.read(), 10) == b""  # and the server ended its side
    finally:
        pushing.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await pushing
        writer.close()
    # The server serves on.
    assert (await _exchange(port, _get()))[0][0] == 200


async def test_a_whole_1_mb_head_sent_before_reading_gets_the_431(port: int) -> None:
    [(status, body)] = await _exchange(port, _get(padding=1024 * 1024))
    assert (status, _code(body)) == (431, "headers_too_large")


async def test_the_limit_is_on_the_whole_head_not_on_one_line(port: int) -> None:
    # 30 headers of 300 bytes (9.3 KB): no line is long, together they are over 8 KiB.
    [(status, body)] = await _exchange(port, _get(padding=300, lines=30))
    assert (status, _code(body)) == (431, "headers_too_large")
    [(status, _)] = await _exchange(port, _get(padding=300, lines=20))
    assert status == 200


async def test_each_request_on_a_connection_has_the_whole_limit(port: int) -> None:
    within = _get(padding=6000)  # three of them are over the limit together
    over = _get(padding=LIMIT)
    answers = await _exchange(port, within, within, within, over)
    assert [status for status, _ in answers] == [200, 200, 200, 431]


async def test_a_body_sent_with_its_head_is_not_counted_as_head(port: int) -> None:
    # A 20 KB JSON body (under MAX_BODY_BYTES, over the head limit) in the same write as its
    # head: the head ends well within the limit, so the body reaches the route (422: an
    # unknown field). The next head on the connection is counted afresh, and refused.
    body = json.dumps({"email": "a@example.com", "password": "x" * 8, "pad": "p" * 20000})
    login = (
        b"POST /auth/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode())
    )
    answers = await _exchange(port, login, _get(padding=LIMIT))
    assert [status for status, _ in answers] == [422, 431]


def test_the_default_limit_is_16_kib() -> None:
    assert Settings(_env_file=None).max_request_header_bytes == 16 * 1024
