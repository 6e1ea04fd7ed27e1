"""Issue 17, part 5, in a real browser: the auth service, the notes service (examples/notes, on
authsvc-kit), nginx with the shipped recipe in front of both, and headless Chromium.

The page is the demo, loaded through nginx, so it shares an origin with `/notes` and
`/notes/ws`; it drives auth-client.js's `fetch()` and `socket()`. The notes service verifies
tokens itself and hears of logouts only by back-channel logout from the auth service (its
outbox), which nginx does not see. What this proves:
- REST and the WebSocket work through nginx after a browser login;
- 5 s access tokens expire twice while the socket stays open and keeps answering: renewed in
  band (one connection, seen by the browser itself), without a reconnect;
- a logout in another tab: the notes service refuses the old access token (401) and closes a
  socket of that session 4403, both within 1 s; the page's socket ends and never reconnects;
- a session ended elsewhere (another device revokes it): the socket's 4403 is the page's first
  news; the client confirms it with the auth service and reports `session_revoked`, no reconnect;
- the notes service never called the auth service per request (its metrics: no /auth/verify, no
  introspection; the keys fetched at most twice);
- the client reconnects, on the same session, after a 4401 (the page could not refresh in time;
  once it can) and after a network error (the notes service killed, then back).
The notes service down during a logout (outbox retry) is tests/downstream/test_end_to_end.py;
forged, replayed, wrong-audience and nonce logout tokens are tests/downstream/test_backchannel.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    WebSocket,
    expect,
)

from tests.browser.test_browser import (
    PageWatch,
    Service,
    access_token,
    login,
    open_demo,
    session_ends,
    session_id,
)
from tests.conftest import PASSWORD
from tests.downstream.issuer import CLIENT_ID
from tests.downstream.wsclient import next_message, open_socket, until_closed
from tests.gateway.test_nginx import run_nginx
from tests.support.servers import (
    AUDIENCE,
    create_user_in,
    free_port,
    started_together,
    uvicorn_server,
)

pytestmark = pytest.mark.slow

ACCESS_TTL = 5  # seconds: the socket must outlive two of these
NO_RECONNECT_WAIT = 0.6  # a reconnect would come within 0.25 s (the first backoff)


class NotesProcess:
    """`uvicorn examples.notes.app:app` on a fixed port, configured by environment only (as
    tests/downstream's notes_service), which a test may kill and start again."""

    def __init__(self, auth: str, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._port = port
        self._env = {
            "AUTHSVC_ISSUER": auth,
            "AUTHSVC_AUDIENCE": AUDIENCE,
            "NOTES_CLIENT_ID": CLIENT_ID,
            "AUTHSVC_LEEWAY": "0",  # an expired token is refused at once, as by the auth service
        }
        self._server: contextlib.AbstractContextManager[tuple[str, subprocess.Popen[bytes]]]
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        self._server = uvicorn_server(
            "sqlite+aiosqlite:///:memory:",  # unused: the notes service has no database
            factory="examples.notes.app:app",
            is_factory=False,
            env=self._env,
            port=self._port,
        )
        _, self._process = self._server.__enter__()
        return self.url

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(None, None, None)

    def kill(self) -> None:
        """SIGKILL: its connections drop without a close frame, as in a network failure."""
        assert self._process is not None
        self._process.kill()
        self._process.wait()

    def restart(self) -> None:
        self.__exit__()
        self.__enter__()


@dataclass(frozen=True)
class Stack:
    gateway: str  # nginx, as the browser reaches it: http://localhost:<port>
    auth: str  # the auth service itself (the notes service's issuer)
    notes: NotesProcess
    database_url: str

    @property
    def service(self) -> Service:
        """The gateway as tests/browser's helpers expect a service."""
        return Service(base=self.gateway, database_url=self.database_url)


@contextlib.contextmanager
def notes_stack(database_url: str, tmp_path: Path) -> Iterator[Stack]:
    """The auth service and the notes service started together, then nginx before both."""
    auth_port, notes_port = free_port(), free_port()
    auth, notes = f"http://127.0.0.1:{auth_port}", f"http://127.0.0.1:{notes_port}"
    receiver = f"{notes}/backchannel-logout"  # straight to the service, not through nginx
    auth_env = {
        "JWT_ISSUER": auth,
        "ACCESS_TOKEN_TTL": str(ACCESS_TTL),
        "JWT_LEEWAY": "0",
        "BACKCHANNEL_LOGOUT_CLIENTS": json.dumps([{"client_id": CLIENT_ID, "uri": receiver}]),
    }
    process = NotesProcess(auth, notes_port)
    with (
        started_together(uvicorn_server(database_url, env=auth_env, port=auth_port), process),
        run_nginx(tmp_path, auth=auth, upstream=notes, notes=notes) as gateway,
    ):
        yield Stack(gateway.replace("127.0.0.1", "localhost"), auth, process, database_url)


@pytest.fixture
async def stack(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    manager = notes_stack(sqlite_url, tmp_path)
    running = await asyncio.to_thread(manager.__enter__)
    try:
        yield running
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


async def new_context(browser: Browser) -> BrowserContext:
    context = await browser.new_context()
    context.set_default_timeout(10_000)
    return context


# ---------------------------------------------------------------------------- page helpers

OPEN_FEED = """() => {
    window.feed = { messages: [], opens: 0, closes: [] };
    window.notesSocket = window.authDemo.client.socket("/notes/ws", {
        onOpen: () => { window.feed.opens += 1; },
        onMessage: (message) => { window.feed.messages.push(message); },
        onClose: (close) => { window.feed.closes.push(close); },
    });
}"""


@dataclass
class Sockets:
    """The WebSockets a page opened to /notes/ws and their frames, as Chromium saw them."""

    opened: list[WebSocket]
    sent: list[str]
    received: list[str]

    def attach(self, page: Page) -> None:
        def on_socket(socket: WebSocket) -> None:
            if socket.url.endswith("/notes/ws"):
                self.opened.append(socket)
                socket.on("framesent", lambda payload: self.sent.append(str(payload)))
                socket.on("framereceived", lambda payload: self.received.append(str(payload)))

        page.on("websocket", on_socket)

    def count(self, frames: list[str], kind: str) -> int:
        return sum(1 for frame in frames if json.loads(frame).get("type") == kind)


async def until(page: Page, predicate: str, arg: object = None, within: float = 10) -> Any:
    """Until the page's `predicate(arg)` (a JS function) is truthy; its value. Not Playwright's
    wait_for_function: its polling evaluates strings, which the demo's CSP (no 'unsafe-eval')
    refuses; this function runs as page.evaluate does, and polls inside the page."""
    value = await page.evaluate(
        f"""async (arg) => {{
            const check = {predicate};
            const end = Date.now() + {int(within * 1000)};
            for (;;) {{
                const value = check(arg);
                if (value || Date.now() > end) return value || null;
                await new Promise((resolve) => setTimeout(resolve, 10));
            }}
        }}""",
        arg,
    )
    assert value is not None, f"not within {within} s: {predicate}"
    return value


async def open_feed(page: Page) -> dict[str, Any]:
    """The page's socket() to /notes/ws; the notes service's hello once it is in."""
    await page.evaluate(OPEN_FEED)
    hello: dict[str, Any] = await until(
        page, "() => window.feed.messages.find((m) => m.type === 'hello')"
    )
    return hello


async def echo(page: Page, n: int) -> dict[str, Any]:
    """A message over the page's socket and the notes service's echo of it."""
    assert await page.evaluate("(n) => window.notesSocket.send({type: 'ping', n})", n) is True
    answer: dict[str, Any] = await until(
        page, "(n) => window.feed.messages.find((m) => m.type === 'echo' && m.data.n === n)", n
    )
    return answer


async def notes_via_page(page: Page) -> tuple[int, dict[str, Any]]:
    """GET /notes through nginx with the client's fetch (Bearer from memory)."""
    result = await page.evaluate(
        """async () => {
            const response = await window.authDemo.client.fetch("/notes");
            return [response.status, await response.json()];
        }"""
    )
    status, body = result
    return int(status), dict(body)


async def feed_state(page: Page) -> dict[str, Any]:
    value = await page.evaluate(
        """() => ({state: window.notesSocket.state, opens: window.feed.opens,
                   closes: window.feed.closes, connections: window.notesSocket.connections,
                   renewals: window.notesSocket.renewals})"""
    )
    assert isinstance(value, dict)
    return value


async def until_refused(gateway: str, token: str, within: float) -> float:
    """Poll GET /notes through nginx with `token` until 401; when that came (monotonic)."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=gateway, timeout=5) as client:
        while True:
            response = await client.get("/notes", headers={"Authorization": f"Bearer {token}"})
            if response.status_code == 401:
                assert response.json()["error"]["code"] == "session_revoked"
                return time.monotonic()
            assert response.status_code == 200, response.text
            assert time.monotonic() < deadline, "the old access token was never refused"
            await asyncio.sleep(0.02)


def requests_per_route(metrics: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    pattern = r"^authsvc_http_request_duration_seconds_count\{([^}]*)\} ([0-9.e+]+)$"
    for labels, value in re.findall(pattern, metrics, flags=re.MULTILINE):
        route = re.search(r'route="([^"]*)"', labels)
        if route:
            counts[route.group(1)] = counts.get(route.group(1), 0) + int(float(value))
    return counts


# ----------------------------------------------------------------------------------- tests


async def test_browser_notes_through_nginx_renewal_and_logouts(
    browser: Browser, stack: Stack
) -> None:
    watch = PageWatch()
    email = await create_user_in(stack.database_url, prefix="notes-e2e")
    # Another user's browser, whose session another device revokes, runs meanwhile: most of
    # this test waits for tokens to expire.
    others = asyncio.gather(
        _revoked_elsewhere(browser, stack, watch),
        _reconnects_after_token_expired(browser, stack, watch),
    )
    context = await new_context(browser)
    try:
        page = await open_demo(context, stack.service, watch)
        sockets = Sockets([], [], [])
        sockets.attach(page)
        await login(page, email)
        sid = await session_id(page)

        # REST through nginx, straight to the notes service (no auth_request on /notes).
        status, body = await notes_via_page(page)
        assert status == 200, body
        assert body["identity"]["session_id"] == sid

        # The WebSocket through nginx: authenticated by its first message, not the URL.
        hello = await open_feed(page)
        assert hello["identity"]["session_id"] == sid
        (socket,) = sockets.opened
        assert "?" not in socket.url
        first = json.loads(sockets.sent[0])
        assert first == {"type": "authenticate", "token": await access_token(page)}

        # A silent refresh (as the client's timer or another tab makes one) reaches the socket
        # in band at once, before the server asks with token_expiring (1.67 s before exp).
        # Made 1.6 s into the token's life, so that the new token expires later.
        tokens_seen = [int(hello["identity"]["expires_at"])]
        await asyncio.sleep(max(0.0, tokens_seen[0] - ACCESS_TTL + 1.6 - time.time()))
        await page.evaluate("window.authDemo.client.refresh()")
        await until(page, "() => window.notesSocket.renewals >= 1", within=1.5)
        assert sockets.count(sockets.received, "token_expiring") == 0

        # Two 5 s tokens expire while the socket stays open and keeps answering. The page is
        # idle: each later renewal answers the server's token_expiring. Polled twice a second
        # (the point is to let real time pass); each echo names the token the connection holds
        # at that moment.
        give_up = time.monotonic() + 4 * ACCESS_TTL
        n = 0
        while not (len(tokens_seen) >= 3 and time.time() > tokens_seen[1]):
            assert time.monotonic() < give_up, tokens_seen
            n += 1
            expires_at = int((await echo(page, n))["expires_at"])
            assert expires_at > time.time()  # the connection is on a live token
            if expires_at != tokens_seen[-1]:
                tokens_seen.append(expires_at)
            await asyncio.sleep(0.5)
        state = await feed_state(page)
        assert (state["connections"], state["opens"], state["closes"]) == (1, 1, []), state
        assert state["state"] == "open", state
        # Renewed after the silent refresh, then on token_expiring: the login's token and the
        # refreshed one both expired meanwhile.
        assert state["renewals"] >= 2, state
        assert len(sockets.opened) == 1  # Chromium's own count: no reconnect
        assert sockets.count(sockets.received, "token_expiring") >= 1
        assert sockets.count(sockets.received, "token_renewed") >= 2
        assert sockets.count(sockets.sent, "authenticate") >= 3
        status, body = await notes_via_page(page)  # and REST on a refreshed token
        assert (status, body["identity"]["session_id"]) == (200, sid), body

        # Logout in another tab. A second socket of the session, outside the page, shows the
        # notes service closing it; the old access token must be refused, both within 1 s.
        other = await open_demo(context, stack.service, watch)
        await expect(other.locator("#status")).to_have_text(f"logged in as {email}")
        old_token = await access_token(page)
        assert old_token is not None
        witness = await open_socket(f"{stack.gateway}/notes", old_token, header=False)
        assert (await next_message(witness))["type"] == "hello"
        started = time.monotonic()
        await other.click("#logout")
        closed, refused_at = await asyncio.gather(
            until_closed(witness, within=5), until_refused(stack.gateway, old_token, within=5)
        )
        assert (closed.code, closed.reason) == (4403, "session_revoked")
        assert closed.at - started < 1.0, closed.at - started
        assert refused_at - started < 1.0, refused_at - started
        # The page's own socket ended with the session, for good.
        await expect(page.locator("#status")).to_have_text("logged out")
        await until(page, "() => window.notesSocket.state === 'closed'")
        await asyncio.sleep(NO_RECONNECT_WAIT)
        state = await feed_state(page)
        assert state["closes"][-1]["final"] is True, state
        assert (state["connections"], len(sockets.opened)) == (1, 1), state
        assert await session_ends(page) == ["logged_out"]
    finally:
        await context.close()
        await asyncio.wait([others], timeout=15)
        others.cancel()  # a no-op once they are done
    await others
    # The notes service verified every request locally: dozens of valid tokens (REST, socket
    # authentications and renewals, echoes) and the auth service saw no verify or
    # introspection call, and its keys were fetched once or twice, not per request.
    async with httpx.AsyncClient(base_url=stack.auth, timeout=5) as client:
        counts = requests_per_route((await client.get("/metrics")).text)
    assert counts.get("/auth/verify", 0) == 0, counts
    assert counts.get("/auth/introspect", 0) == 0, counts
    assert counts.get("/.well-known/jwks.json", 0) <= 2, counts

    # Last: it stops the notes service for a moment.
    await _reconnects_after_network_error(browser, stack, watch)
    assert watch.errors == []


async def _revoked_elsewhere(browser: Browser, stack: Stack, watch: PageWatch) -> None:
    """Another device ends this browser's session (DELETE /auth/sessions/{id}): nothing tells
    the page but the socket's 4403. The client does not reconnect; it asks the auth service,
    which confirms, and the page shows the session revoked."""
    email = await create_user_in(stack.database_url, prefix="notes-e2e-revoked")
    context = await new_context(browser)
    try:
        page = await open_demo(context, stack.service, watch)
        sockets = Sockets([], [], [])
        sockets.attach(page)
        await login(page, email)
        sid = await session_id(page)
        await open_feed(page)
        checks: list[str] = []
        page.on("request", lambda request: checks.append(request.url))
        async with httpx.AsyncClient(base_url=stack.gateway, timeout=5) as client:
            device = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
            bearer = {"Authorization": f"Bearer {device.json()['access_token']}"}
            revoked = time.monotonic()
            assert (await client.delete(f"/auth/sessions/{sid}", headers=bearer)).status_code == 204
        # Within 1 s: long before the page's next refresh (due 3.5 s after its login) could
        # have told it; the session-status call is the client confirming the 4403.
        await expect(page.locator("#status")).to_have_text("session revoked", timeout=1000)
        assert time.monotonic() - revoked < 1.0
        assert any(url.endswith("/auth/session-status") for url in checks), checks
        await until(page, "() => window.notesSocket.state === 'closed'")
        await asyncio.sleep(NO_RECONNECT_WAIT)
        state = await feed_state(page)
        (close,) = state["closes"]
        assert (close["code"], close["reason"], close["final"]) == (4403, "session_revoked", True)
        assert (state["connections"], len(sockets.opened)) == (1, 1), state
        assert await session_ends(page) == ["session_revoked"]
    finally:
        await context.close()


async def _reconnects_after_token_expired(browser: Browser, stack: Stack, watch: PageWatch) -> None:
    """The page cannot refresh (the auth service unreachable from it): the socket's token
    expires unrenewed and the notes service closes it 4401. Not the session's end: once a
    refresh succeeds, the client reconnects with the new token."""
    email = await create_user_in(stack.database_url, prefix="notes-e2e-expired")
    context = await new_context(browser)
    try:
        page = await open_demo(context, stack.service, watch)
        await login(page, email)
        hello = await open_feed(page)
        await page.route("**/auth/refresh", lambda route: route.abort())
        closed = await until(
            page, "() => window.feed.closes.find((c) => c.code === 4401)", within=ACCESS_TTL + 2
        )
        assert (closed["reason"], closed["final"]) == ("token_expired", False)
        assert (await feed_state(page))["state"] == "reconnecting"
        await page.unroute("**/auth/refresh")
        await page.evaluate("window.dispatchEvent(new Event('online'))")  # retry now
        await until(page, "() => window.feed.opens === 2")
        answer = await echo(page, 1)
        assert answer["expires_at"] > hello["identity"]["expires_at"]  # on a new token
        state = await feed_state(page)
        assert (state["state"], state["connections"], len(state["closes"])) == ("open", 2, 1)
        assert await session_ends(page) == []
    finally:
        await context.close()


async def _reconnects_after_network_error(browser: Browser, stack: Stack, watch: PageWatch) -> None:
    """The notes service dies (its connections drop without a close frame): the client
    reconnects with backoff once it is back, on the same session."""
    email = await create_user_in(stack.database_url, prefix="notes-e2e-network")
    context = await new_context(browser)
    try:
        page = await open_demo(context, stack.service, watch)
        await login(page, email)
        await open_feed(page)
        await asyncio.to_thread(stack.notes.kill)
        closed = await until(page, "() => window.feed.closes[0]")
        assert (closed["code"], closed["final"]) == (1006, False), closed
        await asyncio.to_thread(stack.notes.restart)
        await until(page, "() => window.feed.opens === 2")
        state = await feed_state(page)
        assert state["state"] == "open", state
        assert all(close["final"] is False for close in state["closes"]), state
        assert (await echo(page, 1))["type"] == "echo"
        assert await session_ends(page) == []
    finally:
        await context.close()
