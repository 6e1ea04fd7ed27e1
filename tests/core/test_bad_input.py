"""Every bad input gets a 4xx with the error envelope, and changes nothing."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import func, select
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app.core.db import table_of
from app.core.middleware import BodyLimit, RequestEnvelopeMiddleware
from app.sessions.models import RefreshToken, Session
from tests.conftest import PASSWORD, Harness, make_settings, start_harness
from tests.support.servers import uvicorn_server


async def _row_counts(h: Harness) -> tuple[int, int]:
    async with h.ctx.engine.connect() as conn:
        sessions = (
            await conn.execute(select(func.count()).select_from(table_of(Session)))
        ).scalar()
        tokens = (
            await conn.execute(select(func.count()).select_from(table_of(RefreshToken)))
        ).scalar()
    return int(sessions or 0), int(tokens or 0)


@pytest.mark.parametrize("path", ["/auth/login", "/auth/refresh"])
async def test_invalid_utf8_gets_400_malformed_body(harness: Harness, path: str) -> None:
    before = await _row_counts(harness)
    response = await harness.client.post(
        path,
        content=b"\xff\xfe\xfa not utf-8",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_body"
    assert await _row_counts(harness) == before


@pytest.mark.parametrize(
    ("path", "content", "content_type"),
    [
        ("/auth/login", b'{"email": "a@b.c", "password": ', "application/json"),
        ("/auth/login", b'{"email": 12, "password": ["x"]}', "application/json"),
        ("/auth/login", b'{"email": "a@b.c"}', "application/json"),
        ("/auth/login", b'{"email": "a@b.c", "password": "p", "admin": true}', "application/json"),
        ("/auth/login", b"[]", "application/json"),
        ("/auth/login", b"email=a&password=b", "text/plain"),
        ("/auth/refresh", b'{"refresh_token": ""}', "application/json"),
        ("/auth/refresh", b'{"refresh_token": 5}', "application/json"),
        # /auth/refresh parses its own body (app/core/json_body.py): the same refusals.
        ("/auth/refresh", b"", "application/json"),
        ("/auth/refresh", b'{"refresh_token": ', "application/json"),
        ("/auth/refresh", b"[]", "application/json"),
        ("/auth/refresh", b'{"refresh_token": "x", "admin": true}', "application/json"),
        ("/auth/refresh", b'{"refresh_token": "x"}', "text/plain"),
        ("/auth/refresh", b'{"refresh_token": "' + b"x" * 4097 + b'"}', "application/json"),
    ],
)
async def test_malformed_bodies_get_422_with_envelope(
    harness: Harness, path: str, content: bytes, content_type: str
) -> None:
    before = await _row_counts(harness)
    response = await harness.client.post(
        path, content=content, headers={"content-type": content_type}
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"]["code"] == "validation_error"
    assert isinstance(body["error"]["fields"], list)
    assert await _row_counts(harness) == before


async def test_validation_errors_never_echo_the_password(harness: Harness) -> None:
    secret = "s3cret-" + "x" * 2000
    response = await harness.client.post("/auth/login", json={"email": "a@b.c", "password": secret})
    assert response.status_code == 422
    assert "s3cret" not in response.text


async def test_over_long_password_is_refused_fast(harness: Harness) -> None:
    email = await harness.create_user()
    response = await harness.client.post(
        "/auth/login", json={"email": email, "password": PASSWORD + "x" * 1024}
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


async def test_megabyte_password_gets_413(harness: Harness) -> None:
    response = await harness.client.post(
        "/auth/login", json={"email": "a@b.c", "password": "x" * 1_000_000}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_huge_body_without_content_length_gets_413(harness: Harness) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 10_000

    response = await harness.client.post(
        "/auth/login", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_unknown_route_and_method(harness: Harness) -> None:
    missing = await harness.client.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    wrong = await harness.client.delete("/auth/login")
    assert wrong.status_code == 405
    assert wrong.json()["error"]["code"] == "method_not_allowed"


async def test_64_character_passphrase_works(harness: Harness) -> None:
    passphrase = "correct horse battery staple " * 2 + "abcdef"
    assert len(passphrase) == 64
    email = await harness.create_user(password=passphrase)
    await harness.login(email, passphrase)


@pytest.mark.parametrize(
    "body",
    [
        {"email": "a\u0000@example.com", "password": "whatever-password"},
        {"email": "a@example.com\n", "password": "whatever-password"},
        {"email": "a@example.com", "password": "whatever-password", "device_name": "a\u0000b"},
    ],
)
async def test_control_characters_are_refused_before_the_database(
    harness: Harness, body: dict[str, str]
) -> None:
    before = await _row_counts(harness)
    response = await harness.client.post("/auth/login", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert await _row_counts(harness) == before


async def test_control_characters_in_token_endpoint_username(harness: Harness) -> None:
    response = await harness.client.post(
        "/auth/token", data={"grant_type": "password", "username": "a\x00b", "password": "x"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize("content", [b"{}", b'{"refresh_token": null}'])
async def test_refresh_without_any_token_is_401(harness: Harness, content: bytes) -> None:
    response = await harness.client.post(
        "/auth/refresh", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "refresh_token_invalid"


async def test_refresh_validation_error_names_the_body_field_and_not_the_token(
    harness: Harness,
) -> None:
    token = "t0ken-" + "y" * 5000
    response = await harness.client.post("/auth/refresh", json={"refresh_token": token})
    assert response.status_code == 422
    (field,) = response.json()["error"]["fields"]
    assert field["loc"] == ["body", "refresh_token"]
    assert field["type"] == "string_too_long"
    assert "t0ken" not in response.text


def _raw_http(base_url: str, request: bytes) -> bytes:
    """Send raw bytes to a real server and read until it closes or goes quiet."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def test_body_limit_over_a_real_http1_connection(sqlite_url: str) -> None:
    """The body limit counts only chunked bodies; a Content-Length body is bounded by HTTP/1
    framing, which uvicorn enforces. Over a socket, not the test transport."""
    with uvicorn_server(sqlite_url, env={"MAX_BODY_BYTES": "4096"}) as (base, _):
        chunk = b"x" * 1000
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
        head = b"POST /auth/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        over = _raw_http(
            base, head + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked
        )
        assert over.startswith(b"HTTP/1.1 413 ")
        assert b'"payload_too_large"' in over
        # Content-Length: 2 ends the body after "{}": what follows is the next request on the
        # connection (here a pipelined GET), never more body.
        pipelined = b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        framed = _raw_http(base, head + b"Content-Length: 2\r\n\r\n{}" + pipelined)
        assert framed.startswith(b"HTTP/1.1 422 ")
        assert framed.count(b"HTTP/1.1 ") == 2
        assert b"HTTP/1.1 200 OK" in framed


async def _through_body_limit(headers: list[tuple[bytes, bytes]], chunks: int) -> int:
    """Status from the envelope's BodyLimit (4 KiB limit) for an app that reads the whole body,
    when the server hands over `chunks` KiB whatever the headers say."""
    sent = [{"type": "http.request", "body": b"x" * 1024, "more_body": True}] * chunks
    messages = iter([*sent, {"type": "http.request", "body": b"", "more_body": False}])
    statuses: list[int] = []

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await Request(scope, receive).body()
        await Response(status_code=200)(scope, receive, send)

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": "/",
        "headers": headers,
    }
    try:
        limited = RequestEnvelopeMiddleware(app, no_store_prefixes=(), body_limit=BodyLimit(4096))
        await limited(scope, receive, send)
    except HTTPException as exc:
        return exc.status_code
    return statuses[0]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"content-length", b"5000")], 413),  # declared too large: refused before reading
        ([(b"content-length", b"10"), (b"content-length", b"5000")], 413),  # any of several
        ([(b"content-length", b"10"), (b"content-length", b"20")], 413),  # several: counted
        ([(b"transfer-encoding", b"chunked")], 413),  # counted
        ([], 413),  # no framing header: a server that frames it some other way is counted
        ([(b"content-length", b"bogus")], 413),
    ],
)
async def test_body_limit_counts_every_body_http1_framing_does_not_bound(
    headers: list[tuple[bytes, bytes]], expected: int
) -> None:
    assert await _through_body_limit(headers, chunks=8) == expected


async def test_body_limit_trusts_a_single_content_length() -> None:
    # Uvicorn ends the body after Content-Length bytes; a smaller body passes untouched.
    assert await _through_body_limit([(b"content-length", b"3072")], chunks=3) == 200


async def test_a_refused_body_is_readable_by_an_allowed_origin(database_url: str) -> None:
    """The 413 for a declared Content-Length over the limit comes from the request envelope,
    outside the CORS layer: it is sent through CORS all the same, so a browser on an allowed
    origin reads it (and it carries the envelope's headers)."""
    origin = "https://app.example"
    settings = make_settings(database_url, cors_origins=[origin], max_body_bytes=1024)
    async for h in start_harness(settings):
        refused = await h.client.post(
            "/auth/login",
            json={"email": "a@example.com", "password": "x" * 2000},
            headers={"Origin": origin},
        )
    assert refused.status_code == 413
    assert refused.json()["error"]["code"] == "payload_too_large"
    assert refused.headers["access-control-allow-origin"] == origin
    assert "x-request-id" in refused.headers
    assert refused.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (b"0" * 5000 + b"3072", 200),  # leading zeros: a number like any other
        (b"0" * 5000 + b"5000", 413),
        (b"9" * 5000, 413),  # beyond what int() parses: refused, never a 500
    ],
)
async def test_a_padded_content_length_is_read_as_a_number(length: bytes, expected: int) -> None:
    assert await _through_body_limit([(b"content-length", length)], chunks=3) == expected


class _BrokenGate:
    """A gate with a bug, or one that meets a database outage."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def needed(self, path: str, authorization: bool) -> bool:
        return True

    async def check(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        raise self.error


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (RuntimeError("a bug"), 500, "internal_error"),
        (ConnectionRefusedError("database down"), 503, "service_unavailable"),
    ],
)
async def test_a_failing_gate_is_answered_as_the_application_would_be(
    error: Exception, status: int, code: str
) -> None:
    """The gate runs outside ServerErrorMiddleware: the envelope answers for it."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("not reached")

    envelope = RequestEnvelopeMiddleware(app, no_store_prefixes=(), gate=_BrokenGate(error))
    transport = httpx.ASGITransport(app=envelope)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        answer = await client.get("/anything")
    assert answer.status_code == status
    assert answer.json()["error"]["code"] == code
    assert "x-request-id" in answer.headers
    assert "Traceback" not in answer.text


async def test_a_preflight_says_nosniff_too(database_url: str) -> None:
    """Preflights are answered by CORS, outside the envelope, with its header all the same."""
    origin = "https://app.example"
    async for h in start_harness(make_settings(database_url, cors_origins=[origin])):
        preflight = await h.client.options(
            "/auth/login",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert preflight.headers["x-content-type-options"] == "nosniff"
