"""WebSocket sessions in the notes service (a real uvicorn process): authentication at the
handshake or in the first message, in-band renewal before expiry, and the close codes; and,
driving the kit's middleware in process, what the application sees after a close, revocations
racing the first authentication, and the caps on sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt
import pytest
from authsvc_kit import AuthMiddleware, Kit, KitConfig
from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.downstream.issuer import AUDIENCE, CLIENT_ID, FakeIssuer, slow_issuer
from tests.downstream.wsclient import (
    _QUIET,
    AsgiClient,
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
        # Nested deeper than Python's recursion limit: json.loads raises RecursionError.
        '{"type": "authenticate", "token": ' + "[" * 5000,
        # Longer than any token the verifier takes: never parsed.
        json.dumps({"type": "authenticate", "token": "a" * 10_000}),
    ],
    ids=["silence", "bad token", "another type", "not json", "nested", "oversized"],
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


async def test_a_huge_first_message_does_not_stall_the_event_loop(notes: str) -> None:
    """16 MiB of `[[],[],...]` (uvicorn's default ws_max_size) from a client with no
    credentials: parsed, it held the event loop ~3 s and ~400 MB. The kit only looks at a
    first message small enough to carry a token; this one closes the socket 4400."""
    payload = "[" + "[]," * (16 * 1024 * 1024 // 3 - 2) + "[]]"
    socket = await open_socket(notes)
    closing = asyncio.create_task(until_closed(socket, within=8))
    sending = asyncio.create_task(socket.send(payload))
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=notes, timeout=10) as client:
        while not closing.done() or not latencies:
            started = time.monotonic()
            assert (await client.get("/healthz")).status_code == 200
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.02)
    with contextlib.suppress(ConnectionClosed):
        await sending
    closed = closing.result()
    assert (closed.code, closed.reason) == (4400, "authentication_required")
    # A bare uvicorn app receiving the same message (not parsing it) stalls /healthz 0.3-0.35 s
    # on the development machine; parsing it, 2.7 s. Under a loaded clean-clone CI (four test
    # processes on two cores) the kit's stall reached 0.91 s: the bound sits between the two.
    assert max(latencies) < 1.5, f"/healthz stalled {max(latencies):.2f} s"


async def test_messages_nobody_can_parse_do_not_end_the_socket(
    issuer: FakeIssuer, notes: str
) -> None:
    """Text nested deeper than the recursion limit (json.loads raises RecursionError, not a
    ValueError), once plain and once looking like an `authenticate` message: the kit passes
    both to the application (the notes service echoes them as not JSON), and goes on."""
    socket = await open_socket(notes, issuer.access_token(ttl=60))
    assert (await next_message(socket))["type"] == "hello"
    await socket.send("[" * 5000)
    await socket.send('{"type": "authenticate", "x": ' + "[" * 5000)
    await socket.send('{"type": "ping"}')
    replies = [await next_message(socket, within=3) for _ in range(3)]
    assert [(r["type"], r["data"]) for r in replies] == [
        ("echo", None),
        ("echo", None),
        ("echo", {"type": "ping"}),
    ]
    await socket.close()


async def test_a_revoked_session_at_the_start_closes_4403(issuer: FakeIssuer, notes: str) -> None:
    """`session_revoked`, not 4400: the client must not refresh and reconnect."""
    sub, sid = str(uuid.uuid4()), str(uuid.uuid4())
    token = issuer.access_token(sub=sub, sid=sid)
    async with httpx.AsyncClient(base_url=notes, timeout=5) as client:
        logout = issuer.logout_token(sub=sub, sid=sid)
        response = await client.post("/backchannel-logout", data={"logout_token": logout})
        assert response.status_code == 200
    for header in (True, False):
        socket = await open_socket(notes, token, header=header)
        closed = await until_closed(socket, within=3)
        assert (closed.code, closed.reason) == (4403, "session_revoked")


async def test_a_service_token_on_a_user_socket_closes_4403(issuer: FakeIssuer, notes: str) -> None:
    """A client_credentials token (sub `client:<id>`, no sid) on a route taking `Identity`:
    a close code the client can act on (not a dropped connection)."""
    now = int(time.time())
    claims = {"sub": "client:reporting", "client_id": "reporting", "iat": now, "nbf": now}
    service = issuer.sign(
        {"iss": issuer.url, "aud": AUDIENCE, "jti": uuid.uuid4().hex, "exp": now + 300, **claims},
        headers={"typ": "at+jwt"},
    )
    socket = await open_socket(notes, service)
    closed = await until_closed(socket, within=3)
    assert (closed.code, closed.reason) == (4403, "user_token_required")


# -- In process: the kit's middleware around a test application ----------------------------
def _form(token: str) -> bytes:
    return urlencode({"logout_token": token}).encode()


def _config(issuer: FakeIssuer, **changes: Any) -> KitConfig:
    return KitConfig(issuer=issuer.url, audience=AUDIENCE, client_id=CLIENT_ID, **changes)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def test_nothing_reaches_the_app_after_a_revocation_close() -> None:
    """The application is busy while the client fills the kit's inbox (256 messages); a
    logout closes the socket 4403: the application's next receive is the disconnect, and none
    of the queued messages follows it."""
    with slow_issuer() as issuer:
        kit = Kit(_config(issuer))
        sub, sid = str(uuid.uuid4()), str(uuid.uuid4())
        client = AsgiClient(issuer.access_token(sub=sub, sid=sid))
        gate, seen = asyncio.Event(), []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            assert (await receive())["type"] == "websocket.connect"
            await gate.wait()  # a busy application (or one blocked on a slow client)
            while True:
                message = await receive()
                seen.append(message["type"])
                if message["type"] == "websocket.disconnect":
                    return

        async with kit.lifespan():
            task = asyncio.create_task(
                AuthMiddleware(app, kit)(client.scope, client.receive, client.send)
            )
            await client.to_app.put({"type": "websocket.connect"})
            await client.next_sent("websocket.accept", within=5)
            for i in range(300):  # more than the kit's inbox holds
                await client.to_app.put({"type": "websocket.receive", "text": f'{{"n": {i}}}'})
            # The inbox full and one put waiting: a queue size, which no event signals.
            while client.to_app.qsize() > 300 - 257:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            status, _ = await kit.backchannel.handle(_form(issuer.logout_token(sub=sub, sid=sid)))
            assert status == 200
            close = await client.next_sent("websocket.close", within=1)
            assert close["code"] == 4403
            gate.set()
            await asyncio.wait_for(task, 2)  # the app ended on the kit's disconnect
        assert seen == ["websocket.disconnect"]


async def test_a_logout_during_the_first_authentication_still_closes_the_socket() -> None:
    """The revocation arrives while the socket's first authentication awaits (here a live
    check, made slow so the window is certain): the socket is closed 4403 before the
    application ever sees it."""
    with slow_issuer() as issuer:
        issuer.verify_delay = 0.8
        kit = Kit(_config(issuer, live_check=True, http_timeout=3.0))
        sub, sid = str(uuid.uuid4()), str(uuid.uuid4())
        client = AsgiClient(issuer.access_token(sub=sub, sid=sid, ttl=300))
        connected = asyncio.Event()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await receive()
            connected.set()
            await _until_disconnect(receive)

        async with kit.lifespan():
            task = asyncio.create_task(
                AuthMiddleware(app, kit)(client.scope, client.receive, client.send)
            )
            await client.to_app.put({"type": "websocket.connect"})
            await client.next_sent("websocket.accept", within=5)
            await asyncio.sleep(0.3)  # the live check is in flight
            status, _ = await kit.backchannel.handle(_form(issuer.logout_token(sub=sub, sid=sid)))
            assert status == 200
            close = await client.next_sent("websocket.close", within=2)
            await asyncio.wait_for(task, 2)
        assert (close["code"], close["reason"]) == (4403, "session_revoked")
        assert not connected.is_set()
        assert (len(kit.sockets), kit.sockets.pending) == (0, 0)


async def test_sockets_are_capped_per_session_and_while_authenticating() -> None:
    with slow_issuer() as issuer:
        kit = Kit(_config(issuer, ws_max_per_session=2, ws_max_pending=1, ws_auth_timeout=5))
        sid = str(uuid.uuid4())
        token = issuer.access_token(sid=sid)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await receive()
            await _until_disconnect(receive)

        async def connect(client: AsgiClient) -> tuple[asyncio.Task[None], str]:
            task = asyncio.create_task(
                AuthMiddleware(app, kit)(client.scope, client.receive, client.send)
            )
            with_token = any(name == b"authorization" for name, _ in client.scope["headers"])

            def counted() -> int:  # what this socket joins once open: its session's or the queue
                return len(kit.sockets) if with_token else kit.sockets.pending

            before = counted()
            await client.to_app.put({"type": "websocket.connect"})
            await client.next_sent("websocket.accept", within=5)
            # Open once the kit counts it (authenticated, or waiting for its first message):
            # under a loaded CI a fixed 0.15 s was shorter than the token's check, and the next
            # socket then met the pending cap instead of the per-session one.
            deadline = time.monotonic() + 5
            while counted() == before:
                with contextlib.suppress(TimeoutError):
                    close = await client.next_sent("websocket.close", within=0.05)
                    await asyncio.wait_for(task, 2)
                    return task, close["reason"]
                assert time.monotonic() < deadline, "the socket was neither counted nor closed"
            return task, "open"

        async with kit.lifespan():
            same = [AsgiClient(token) for _ in range(3)]
            opened = [await connect(client) for client in same]
            assert [reason for _, reason in opened] == ["open", "open", "too_many_connections"]
            assert len(kit.sockets) == 2
            # Another session is not affected; one socket closing makes room in this one.
            other, _ = await connect(other_client := AsgiClient(issuer.access_token()))
            await same[0].to_app.put({"type": "websocket.disconnect", "code": 1000})
            await asyncio.wait_for(opened[0][0], 2)
            assert (await connect(again := AsgiClient(token)))[1] == "open"

            # Unauthenticated (waiting for a first message): one at a time here.
            waiting = AsgiClient(None)
            pending, reason = await connect(waiting)
            assert (reason, kit.sockets.pending) == ("open", 1)
            assert (await connect(AsgiClient(None)))[1] == "try_again_later"

            for client in (same[1], other_client, again, waiting):
                await client.to_app.put({"type": "websocket.disconnect", "code": 1000})
            await asyncio.wait_for(asyncio.gather(opened[1][0], other, pending), 2)
        assert (len(kit.sockets), kit.sockets.pending) == (0, 0)
