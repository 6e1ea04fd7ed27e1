"""WebSocket sessions in the notes service (a real uvicorn process): authentication at the
handshake or in the first message, in-band renewal before expiry, and the close codes."""

from __future__ import annotations

import json
import time
import uuid

import jwt
import pytest
from websockets.asyncio.client import connect

from tests.downstream.issuer import FakeIssuer
from tests.downstream.wsclient import (
    _QUIET,
    next_message,
    open_socket,
    until_closed,
    until_type,
    ws_url,
)

pytestmark = pytest.mark.slow


async def test_authenticated_by_header_or_first_message(issuer: FakeIssuer, notes: str) -> None:
    token = issuer.access_token()
    by_header = await open_socket(notes, token)
    by_message = await open_socket(notes, token, header=False)
    for socket in (by_header, by_message):
        hello = await next_message(socket)
        assert hello["type"] == "hello"
        assert (
            hello["identity"]["expires_at"]
            == jwt.decode(token, options={"verify_signature": False})["exp"]
        )
        await socket.send(json.dumps({"type": "note", "text": "from the socket"}))
        assert (await until_type(socket, "note"))["note"]["text"] == "from the socket"
        await socket.close()


@pytest.mark.parametrize(
    "first",
    [
        None,  # nothing within the auth timeout
        '{"type": "authenticate", "token": "not.a.token"}',
        '{"type": "hello"}',
        "not json",
    ],
)
async def test_no_valid_first_token_closes_4400(
    issuer: FakeIssuer, notes: str, first: str | None
) -> None:
    socket = await open_socket(notes)
    if first is not None:
        await socket.send(first)
    closed = await until_closed(socket, within=3)
    assert (closed.code, closed.reason) == (4400, "authentication_required")
    assert closed.messages == []


async def test_a_token_in_the_url_is_not_accepted(issuer: FakeIssuer, notes: str) -> None:
    token = issuer.access_token()
    url = ws_url(notes) + f"?access_token={token}&token={token}"
    async with connect(url, open_timeout=5, logger=_QUIET) as socket:
        closed = await until_closed(socket, within=3)
    assert (closed.code, closed.reason) == (4400, "authentication_required")


async def test_in_band_renewal_keeps_the_socket_and_no_renewal_closes_4401(
    issuer: FakeIssuer, notes: str
) -> None:
    sub, sid = str(uuid.uuid4()), str(uuid.uuid4())
    first = issuer.access_token(sub=sub, sid=sid, ttl=3)
    first_exp = jwt.decode(first, options={"verify_signature": False})["exp"]
    socket = await open_socket(notes, first, header=False)
    assert (await next_message(socket))["type"] == "hello"

    expiring = await until_type(socket, "token_expiring", within=4)
    assert expiring["expires_at"] == first_exp
    assert time.time() < first_exp  # told before expiry
    second = issuer.access_token(sub=sub, sid=sid, ttl=3, iat=first_exp - 2)
    await socket.send(json.dumps({"type": "authenticate", "token": second}))
    renewed = await until_type(socket, "token_renewed")
    assert renewed["expires_at"] == first_exp + 1

    # Past the first token's expiry the same connection keeps working on the new one.
    others = []
    while time.time() < first_exp + 0.3:
        await socket.send('{"type": "ping"}')
        while (message := await next_message(socket))["type"] != "echo":
            others.append(message)
        assert message["expires_at"] == first_exp + 1

    closed = await until_closed(socket, within=4)
    assert (closed.code, closed.reason) == (4401, "token_expired")
    others += [m for m in closed.messages if m["type"] != "echo"]
    assert others == [{"type": "token_expiring", "expires_at": first_exp + 1}]
    assert abs(time.time() - (first_exp + 1)) < 0.6  # closed at the renewed token's expiry


@pytest.mark.parametrize("renewal", ["another sid", "another sub", "not newer", "invalid"])
async def test_a_mismatched_renewal_closes_4400(
    issuer: FakeIssuer, notes: str, renewal: str
) -> None:
    sub, sid = str(uuid.uuid4()), str(uuid.uuid4())
    token = issuer.access_token(sub=sub, sid=sid, ttl=60)
    socket = await open_socket(notes, token)
    assert (await next_message(socket))["type"] == "hello"
    fresh = {
        "another sid": issuer.access_token(sub=sub, ttl=120),
        "another sub": issuer.access_token(sid=sid, ttl=120),
        "not newer": token,
        "invalid": token[:-4] + "AAAA",
    }[renewal]
    await socket.send(json.dumps({"type": "authenticate", "token": fresh}))
    closed = await until_closed(socket, within=3)
    assert (closed.code, closed.reason) == (4400, "authentication_required")
