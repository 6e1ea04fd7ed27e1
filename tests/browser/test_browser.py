"""Browser mode in a real browser: headless Chromium (Debian's) driven by Playwright.

The service runs as real uvicorn processes; pages are opened at http://localhost:<port> (Secure
cookies are allowed there). Each test gets a fresh browser context, so a fresh cookie jar.

Without /usr/bin/chromium (or without Playwright) the tests skip; REQUIRE_BROWSER=1 turns that
into a failure. Playwright's own browser download is never used.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.core import migrate
from app.core.db import create_engine, table_of
from app.sessions.models import RefreshToken, Session
from app.users.models import User
from tests.browser.conftest import REQUIRE_BROWSER
from tests.conftest import PASSWORD
from tests.support.servers import create_user_in, free_port, uvicorn_server

try:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        Page,
        Response,
        Route,
        expect,
    )
except ImportError:  # pragma: no cover - the dev dependency is missing
    if REQUIRE_BROWSER:
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow

ACCESS_TTL = 5  # seconds: short, so that tokens expire while the tests run
IDLE_TIMEOUT = 10  # the shortest the settings allow
# An allowed origin that no test page uses: CORS is on, and the attacker's origins are not in it.
ALLOWED_ORIGIN = "http://localhost:9"
BASE_ENV = {
    "ACCESS_TOKEN_TTL": str(ACCESS_TTL),
    "JWT_LEEWAY": "0",  # an expired token is refused at once, as in the worst deployment
    "CORS_ORIGINS": f'["{ALLOWED_ORIGIN}"]',
}


# ------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Service:
    base: str  # http://localhost:<port>
    database_url: str


@contextlib.asynccontextmanager
async def _serve(
    database_url: str, env: dict[str, str], port: int | None = None
) -> AsyncIterator[Service]:
    server = uvicorn_server(database_url, env=env, port=port)
    base, _ = await asyncio.to_thread(server.__enter__)
    try:
        yield Service(base=base.replace("127.0.0.1", "localhost"), database_url=database_url)
    finally:
        await asyncio.to_thread(server.__exit__, None, None, None)


async def _sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('browser') / 'auth.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    return url


@pytest.fixture(scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    """Short access tokens, long sessions; its own SQLite database."""
    async with _serve(await _sqlite_database(tmp_path_factory), BASE_ENV) as svc:
        yield svc


@pytest.fixture(scope="module")
async def pg_service(postgres_url: str) -> AsyncIterator[Service]:
    """The same configuration on PostgreSQL, for the tabs that race."""
    async with _serve(postgres_url, BASE_ENV) as svc:
        yield svc


@pytest.fixture(scope="module")
async def idle_service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    env = {
        **BASE_ENV,
        "SESSION_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
        "SESSION_TOUCH_INTERVAL": "1",
    }
    async with _serve(await _sqlite_database(tmp_path_factory), env) as svc:
        yield svc


# -------------------------------------------------------------------------------- helpers


async def create_user(database_url: str) -> str:
    return await create_user_in(database_url, prefix="browser")


@dataclass
class UserRecords:
    sessions: list[Any]
    events: list[Any]
    tokens: list[Any]

    def event_names(self) -> list[str]:
        return [e.event for e in self.events]


async def records_of(database_url: str, email: str) -> UserRecords:
    """Everything the database holds about one user's sessions."""
    users_t, sessions_t = table_of(User), table_of(Session)
    events_t, tokens_t = table_of(AuditEvent), table_of(RefreshToken)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            user_id = (
                await conn.execute(select(users_t.c.id).where(users_t.c.email == email))
            ).scalar_one()
            sessions = list(
                await conn.execute(select(sessions_t).where(sessions_t.c.user_id == user_id))
            )
            events = list(
                await conn.execute(
                    select(events_t).where(events_t.c.user_id == user_id).order_by(events_t.c.id)
                )
            )
            ids = [s.id for s in sessions]
            tokens = list(
                await conn.execute(select(tokens_t).where(tokens_t.c.session_id.in_(ids)))
            )
    finally:
        await engine.dispose()
    return UserRecords(sessions=sessions, events=events, tokens=tokens)


class PageWatch:
    """Uncaught errors of a page: a test that ends with any of them fails."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def attach(self, page: Page) -> Page:
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: {error}"))
        return page


async def open_demo(context: BrowserContext, service: Service, watch: PageWatch) -> Page:
    page = watch.attach(await context.new_page())
    await page.goto(f"{service.base}/demo")
    await settled(page)
    return page


async def settled(page: Page) -> None:
    """The demo has handled its page-load refresh (logged in or not)."""
    await expect(page.locator("#status")).not_to_have_attribute("data-state", "checking")


async def login(page: Page, email: str) -> None:
    await expect(page.locator("#status")).to_have_text("logged out")
    await page.fill("#email", email)
    await page.fill("#password", PASSWORD)
    await page.click("#login")
    await expect(page.locator("#status")).to_have_text(f"logged in as {email}")
    await expect(page.locator("#who")).to_have_text(email)


async def session_id(page: Page) -> str:
    value = await page.evaluate("window.authDemo.client.session()?.id ?? null")
    assert isinstance(value, str), value
    return value


async def access_token(page: Page) -> str | None:
    value = await page.evaluate("window.authDemo.client.accessToken()")
    assert value is None or isinstance(value, str)
    return value


async def until_token_lapsed(page: Page) -> None:
    """Until the access token the page holds is past its `exp` at the server (no leeway). Not a
    fixed sleep: the page may still make the one refresh its last activity earned, so the token
    is read again after each wait; an idle page must stop there."""
    give_up = time.monotonic() + 3 * ACCESS_TTL
    while (token := await access_token(page)) is not None:
        left = jwt.decode(token, options={"verify_signature": False})["exp"] - time.time()
        if left < -0.05:  # expired is exp <= now; a margin for the server's later reading
            return
        assert time.monotonic() < give_up, "an idle page kept refreshing its access token"
        await asyncio.sleep(min(left + 0.1, 0.5))


async def record_status_history(page: Page) -> None:
    """From now on, remember every text the status element shows."""
    await page.evaluate(
        """() => {
            const status = document.getElementById("status");
            window.statusHistory = [status.textContent];
            new MutationObserver(() => window.statusHistory.push(status.textContent))
                .observe(status, {childList: true, characterData: true, subtree: true});
        }"""
    )


async def status_history(page: Page) -> list[str]:
    history = await page.evaluate("window.statusHistory")
    assert isinstance(history, list)
    return [str(item) for item in history]


async def session_ends(page: Page) -> list[str]:
    """The reasons onSessionEnd was called with, in order."""
    ends = await page.evaluate("window.authDemo.ends")
    assert isinstance(ends, list)
    return [str(reason) for reason in ends]


async def cookie_names(context: BrowserContext) -> set[str]:
    return {c.get("name", "") for c in await context.cookies()}


# ---------------------------------------------------------------------------------- tests


Scenario = Callable[[BrowserContext, Service], Awaitable[None]]
REAL_TIME_TEST = "test_scenarios_that_wait_on_real_time"


@pytest.fixture(scope="module", autouse=True)
async def real_time_scenarios(
    request: pytest.FixtureRequest, browser: Browser, service: Service, idle_service: Service
) -> AsyncIterator[asyncio.Task[None] | None]:
    """Token expiry while clicking (b), a network blip during a refresh, and the idle timeout
    (e) spend most of their time waiting for real clocks (5 s tokens, a 10 s idle timeout).
    They start with this module, run side by side (and beside its other tests) on the shared
    event loop, each in its own browser context (cookies are kept per host, not per port, so
    each must see only its own); the module's last test collects their outcome."""
    if not any(item.name == REAL_TIME_TEST for item in request.session.items):
        yield None
        return

    async def run(scenario: Scenario, svc: Service) -> None:
        context = await browser.new_context()
        context.set_default_timeout(10_000)
        try:
            await scenario(context, svc)
        finally:
            await context.close()

    async def all_of_them() -> None:
        async with asyncio.TaskGroup() as scenarios:  # the first failure cancels the others
            scenarios.create_task(run(_idle_timeout_shows_session_expired, idle_service))
            scenarios.create_task(
                run(_access_token_expiry_passes_unnoticed_while_clicking, service)
            )
            scenarios.create_task(
                run(_network_blip_during_refresh_is_retried_not_a_logout, service)
            )

    task = asyncio.create_task(all_of_them())
    yield task
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_demo_counts_down_without_polling(
    context: BrowserContext, service: Service
) -> None:
    """Two tabs show live countdowns for seconds without asking the server anything (the demo
    polled session-status once a second per tab: 209 calls in 70 s with 3 tabs)."""
    watch = PageWatch()
    email = await create_user(service.database_url)
    page = await open_demo(context, service, watch)
    await login(page, email)
    other = await open_demo(context, service, watch)
    calls: list[str] = []
    for tab in (page, other):
        tab.on("request", lambda request: calls.append(request.url))
    before = await page.locator("#absolute").text_content()
    await asyncio.sleep(3.5)
    after = await page.locator("#absolute").text_content()
    assert before != after  # the countdown runs
    await expect(other.locator("#status")).to_have_text(f"logged in as {email}")
    # (Refreshes at refresh_after are the client's work, not polling.)
    assert [url for url in calls if "session-status" in url] == []
    assert watch.errors == []


async def test_login_then_reload_stays_logged_in(context: BrowserContext, service: Service) -> None:
    """(a) A reload forgets the in-memory access token; the HttpOnly cookie brings it back."""
    watch = PageWatch()
    email = await create_user(service.database_url)
    page = await open_demo(context, service, watch)
    await login(page, email)
    sid = await session_id(page)
    token = await access_token(page)
    assert token

    cookies = {(c.get("name"), c.get("path")): c for c in await context.cookies()}
    for path in ("/auth/refresh", "/auth/logout"):
        refresh_cookie = cookies[("__Secure-refresh_token", path)]
        assert refresh_cookie.get("httpOnly") is True
        assert refresh_cookie.get("secure") is True
        assert refresh_cookie.get("sameSite") == "Strict"
    csrf_cookie = cookies[("__Host-csrf_token", "/")]
    assert csrf_cookie.get("httpOnly") is False
    # The access token lives in memory only: not in storage, not in a cookie.
    stored = await page.evaluate(
        """() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage),
                                 document.cookie])"""
    )
    assert token not in stored
    assert not any(token in str(c.get("value")) for c in cookies.values())

    await page.reload()
    await expect(page.locator("#status")).to_have_text(f"logged in as {email}")
    await expect(page.locator("#who")).to_have_text(email)
    assert await session_id(page) == sid  # the same session, not a new login
    assert await access_token(page) not in (None, token)
    await expect(page.locator("#login-form")).to_be_hidden()
    await expect(page.locator("#error")).to_have_text("")

    records = await records_of(service.database_url, email)
    assert records.event_names().count("login.succeeded") == 1
    assert "refresh.rotated" in records.event_names()  # the reload went through /auth/refresh
    assert watch.errors == []


async def _access_token_expiry_passes_unnoticed_while_clicking(
    context: BrowserContext, service: Service
) -> None:
    """(b) 5 s access tokens expire several times while the user works, unnoticed: proactive
    refreshes while they click, a refresh before the request after a pause."""
    watch = PageWatch()
    email = await create_user(service.database_url)
    page = await open_demo(context, service, watch)
    await login(page, email)
    await record_status_history(page)
    tokens = {await access_token(page)}
    checks = int(await page.text_content("#checks") or "0")

    async def click() -> None:
        nonlocal checks
        await page.click("#whoami")
        checks += 1
        await expect(page.locator("#checks")).to_have_text(str(checks))
        await expect(page.locator("#error")).to_have_text("")
        tokens.add(await access_token(page))

    # The user clicks until the client replaces the token by itself while they work (its
    # refresh_after comes before expiry: about 3.5 s into a 5 s token).
    give_up = time.monotonic() + 2 * ACCESS_TTL
    while len(tokens) < 2:
        assert time.monotonic() < give_up, "no proactive refresh while the user clicked"
        await click()
        await asyncio.sleep(0.5)
        tokens.add(await access_token(page))
    # The user reads for a while: the last token lapses (an idle tab does not refresh).
    await until_token_lapsed(page)
    # The next clicks need a refresh first; they never see an error.
    for _ in range(4):
        await click()
        await asyncio.sleep(0.5)

    await expect(page.locator("#status")).to_have_text(f"logged in as {email}")
    history = await status_history(page)
    assert all(text == f"logged in as {email}" for text in history), history
    tokens.discard(None)
    assert len(tokens) >= 3, "the access token should have been replaced several times"
    records = await records_of(service.database_url, email)
    assert records.event_names().count("refresh.rotated") >= 2
    assert "refresh.reuse_detected" not in records.event_names()
    assert [s.revoked_at for s in records.sessions] == [None]
    assert watch.errors == []


async def _network_blip_during_refresh_is_retried_not_a_logout(
    context: BrowserContext, service: Service
) -> None:
    """A refresh that fails for network reasons is retried with backoff; the request that
    needed it completes once the network is back, and the session never ends."""
    watch = PageWatch()
    email = await create_user(service.database_url)
    page = await open_demo(context, service, watch)
    await login(page, email)
    await record_status_history(page)
    failed: list[str] = []
    retried = asyncio.Event()

    async def network_down(route: Route) -> None:
        failed.append(route.request.url)
        if len(failed) >= 3:
            retried.set()
        await route.abort("internetdisconnected")

    await page.route("**/auth/refresh", network_down)
    await until_token_lapsed(page)  # the access token is no longer usable
    checks = int(await page.text_content("#checks") or "0")
    await page.click("#whoami")  # needs a refresh, which fails for a while
    # Three attempts (backoff 0.25 s, 0.5 s, ...): well inside 10 s.
    await asyncio.wait_for(retried.wait(), timeout=10)
    await page.unroute("**/auth/refresh", network_down)

    # The next attempt (backoff doubling from 0.25 s, with jitter) completes the request.
    await expect(page.locator("#checks")).to_have_text(str(checks + 1), timeout=15_000)
    await expect(page.locator("#error")).to_have_text("")
    history = await status_history(page)
    assert all(text == f"logged in as {email}" for text in history), history
    assert await session_ends(page) == []
    records = await records_of(service.database_url, email)
    assert [s.revoked_at for s in records.sessions] == [None]
    assert watch.errors == []


@pytest.mark.parametrize("web_locks", [True, False], ids=["web-locks", "broadcast-fallback"])
async def test_three_tabs_opened_at_once_postgres(
    context: BrowserContext, pg_service: Service, web_locks: bool
) -> None:
    """(c) Tabs that load together refresh one after another (or adopt each other's token):
    all logged in, one session, never a reuse detection or a revocation. Also where the Web
    Locks API is missing (the client falls back to announcing refreshes on its channel)."""
    if not web_locks:
        await context.add_init_script(
            "Object.defineProperty(Navigator.prototype, 'locks', {get: () => undefined})"
        )
    watch = PageWatch()
    email = await create_user(pg_service.database_url)
    first = await open_demo(context, pg_service, watch)
    await login(first, email)
    sid = await session_id(first)
    await first.close()

    tabs = [watch.attach(await context.new_page()) for _ in range(3)]
    for _ in range(3):  # open together, then reload together, twice
        await asyncio.gather(*(tab.goto(f"{pg_service.base}/demo") for tab in tabs))
        for tab in tabs:
            await expect(tab.locator("#status")).to_have_text(f"logged in as {email}")
            assert await session_id(tab) == sid
    # Every tab's token works.
    for tab in tabs:
        before = int(await tab.text_content("#checks") or "0")
        await tab.click("#whoami")
        await expect(tab.locator("#checks")).to_have_text(str(before + 1))
        await expect(tab.locator("#error")).to_have_text("")

    records = await records_of(pg_service.database_url, email)
    names = records.event_names()
    assert "refresh.reuse_detected" not in names, names
    if web_locks:
        # Single flight: the tabs took turns, so the server never even saw a retry. (The
        # fallback's announcements can still cross; the server then answers a retry.)
        assert "refresh.retried" not in names, names
    assert await tabs[0].evaluate("!!navigator.locks") is web_locks
    assert names.count("login.succeeded") == 1
    assert [(s.id, s.revoked_at) for s in records.sessions] == [(uuid.UUID(sid), None)]
    assert all(t.revoked_at is None for t in records.tokens)
    assert watch.errors == []


async def test_logout_in_one_tab_logs_out_the_others_within_2s(
    context: BrowserContext, service: Service
) -> None:
    """(d) Logout revokes the session, clears the cookies and tells every tab at once."""
    watch = PageWatch()
    email = await create_user(service.database_url)
    tab1 = await open_demo(context, service, watch)
    await login(tab1, email)
    tab2 = await open_demo(context, service, watch)
    tab3 = await open_demo(context, service, watch)
    for tab in (tab2, tab3):
        await expect(tab.locator("#status")).to_have_text(f"logged in as {email}")

    await tab1.click("#logout")
    started = time.monotonic()
    for tab in (tab1, tab2, tab3):
        await expect(tab.locator("#status")).to_have_text("logged out", timeout=2_000)
    elapsed = time.monotonic() - started
    assert elapsed < 2, elapsed
    for tab in (tab1, tab2, tab3):
        assert await access_token(tab) is None
        assert await session_ends(tab) == ["logged_out"]  # once, with the reason

    records = await records_of(service.database_url, email)
    assert [s.revoke_reason for s in records.sessions] == ["logout"]
    assert "logout" in records.event_names()
    assert not await cookie_names(context) & {"__Secure-refresh_token", "__Host-csrf_token"}
    # A reload does not bring the session back.
    await tab2.reload()
    await settled(tab2)
    await expect(tab2.locator("#status")).to_have_text("logged out")
    assert watch.errors == []


async def _idle_timeout_shows_session_expired(
    context: BrowserContext, idle_service: Service
) -> None:
    """(e) With no activity the session dies at its idle timeout and both open tabs say so,
    by themselves and once each: the countdown polling (session-status) does not keep the
    session alive."""
    watch = PageWatch()
    email = await create_user(idle_service.database_url)
    page = await open_demo(context, idle_service, watch)
    await login(page, email)
    logged_in = time.monotonic()
    other = await open_demo(context, idle_service, watch)
    for tab in (page, other):
        await expect(tab.locator("#status")).to_have_text(f"logged in as {email}")
        await expect(tab.locator("#idle")).not_to_have_text("–")

    for tab in (page, other):
        await expect(tab.locator("#status")).to_have_text(
            "session expired", timeout=(IDLE_TIMEOUT + ACCESS_TTL + 8) * 1000
        )
    elapsed = time.monotonic() - logged_in
    assert elapsed >= IDLE_TIMEOUT - 1, elapsed  # not before the idle timeout
    await asyncio.sleep(1.5)  # later checks must not report the end a second time
    for tab in (page, other):
        assert await access_token(tab) is None
        assert await session_ends(tab) == ["session_expired"]
        await expect(tab.locator("#login-form")).to_be_visible()

    records = await records_of(idle_service.database_url, email)
    [session] = records.sessions
    assert session.revoked_at is None  # it expired; nobody revoked it
    assert "refresh.reuse_detected" not in records.event_names()
    # The cookies outlive the idle expiry (Max-Age runs to the absolute deadline), so a reload
    # asks the server, which says why: the session expired. It does not come back.
    assert {"__Secure-refresh_token", "__Host-csrf_token"} <= await cookie_names(context)
    await page.reload()
    await settled(page)
    await expect(page.locator("#status")).to_have_text("session expired")
    assert watch.errors == []


class _AttackerPage(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<!doctype html><title>attacker</title><p>nothing to see</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass


@contextlib.contextmanager
def attacker_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _AttackerPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


ATTACKS = """async ({target}) => {
    const outcome = async (promise) => {
        try { const r = await promise; return r.type === "opaque" ? "opaque" : r.status; }
        catch (error) { return error.name; }
    };
    const csrf = (document.cookie.match(/__Host-csrf_token=([^;]+)/) || [])[1] || "guess";
    const results = {};
    for (const path of ["/auth/refresh", "/auth/logout"]) {
        // What the real client sends: needs a CORS preflight, which a foreign origin fails.
        results[path + " cors json"] = await outcome(fetch(target + path, {
            method: "POST", credentials: "include", body: "{}",
            headers: {"Content-Type": "application/json", "Session-Transport": "cookie",
                      "X-CSRF-Token": csrf},
        }));
        // A "simple" request needs no preflight; the server must refuse it.
        results[path + " no-cors text"] = await outcome(fetch(target + path, {
            method: "POST", credentials: "include", mode: "no-cors", body: "{}",
            headers: {"Content-Type": "text/plain"},
        }));
    }
    return results;
}"""


def _recorder(origin: str, seen: list[tuple[str, str, int]]) -> Callable[[Response], None]:
    def record(response: Response) -> None:
        if "/auth/" in response.url:
            seen.append((origin, response.request.method, response.status))

    return record


async def test_cross_origin_page_cannot_refresh_or_log_out(
    context: BrowserContext, service: Service
) -> None:
    """(f) Pages of other origins, cross-site (127.0.0.1) and same-site (localhost on another
    port, which gets the cookies: cookies ignore ports), cannot rotate or revoke the session."""
    watch = PageWatch()
    email = await create_user(service.database_url)
    demo = await open_demo(context, service, watch)
    await login(demo, email)
    sid = await session_id(demo)
    before = await records_of(service.database_url, email)

    seen: list[tuple[str, str, int]] = []
    with attacker_server() as port:
        for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
            evil = watch.attach(await context.new_page())
            evil.on("response", _recorder(origin, seen))
            await evil.goto(f"{origin}/")
            results = await evil.evaluate(ATTACKS, {"target": service.base})
            assert isinstance(results, dict)
            for name, outcome in results.items():
                if "cors json" in name:
                    assert outcome == "TypeError", (origin, name, outcome)  # preflight refused
                else:
                    assert outcome == "opaque", (origin, name, outcome)
            # The classic CSRF: a cross-origin form post (a top-level navigation).
            await evil.set_content(
                f"""<form method="post" enctype="text/plain"
                          action="{service.base}/auth/logout"><input name="a" value="b"></form>"""
            )
            async with evil.expect_navigation():
                await evil.evaluate("document.forms[0].submit()")
            await evil.close()

    # Whatever reached the server was refused (preflights get 400, posts 401/403).
    assert seen, "the attack requests should have reached the server"
    assert all(status >= 400 for _, _, status in seen), seen
    same_site = [s for o, m, s in seen if o.startswith("http://localhost") and m == "POST"]
    assert 403 in same_site, seen  # cookies were sent, and the CSRF check refused them

    # The session is untouched: no rotation, no logout, and the page still works.
    after = await records_of(service.database_url, email)
    assert after.event_names() == before.event_names()
    assert len(after.tokens) == len(before.tokens)
    assert [(s.id, s.revoked_at) for s in after.sessions] == [(uuid.UUID(sid), None)]
    await demo.click("#whoami")
    await expect(demo.locator("#status")).to_have_text(f"logged in as {email}")
    await expect(demo.locator("#error")).to_have_text("")
    assert watch.errors == []


async def test_docs_authorize_then_try_session_status(
    context: BrowserContext, service: Service
) -> None:
    """(g) /docs works offline: Authorize with the password flow, then Try it out on a
    protected route and on logout."""
    watch = PageWatch()
    email = await create_user(service.database_url)
    foreign: list[str] = []

    async def local_only(route: Route) -> None:
        if route.request.url.startswith((service.base, "data:", "blob:")):
            await route.continue_()
        else:
            foreign.append(route.request.url)
            await route.abort()

    await context.route("**/*", local_only)
    page = watch.attach(await context.new_page())
    await page.goto(f"{service.base}/docs")
    await page.click("button.btn.authorize")
    dialog = page.locator(".modal-ux")
    # The OAuth2 password flow's block (the dialog may list other schemes too). It opens in
    # view, first: a user's login must not land in the introspection clients' Basic fields.
    password_flow = dialog.locator(".auth-container").filter(has_text="(OAuth2, password)")
    await expect(dialog.locator(".auth-container").first).to_contain_text("(OAuth2, password)")
    await expect(password_flow.locator("#oauth_username")).to_be_in_viewport()
    await expect(dialog.locator(".modal-ux-content")).to_have_js_property("scrollTop", 0)
    await expect(password_flow.locator("#oauth_username")).to_be_focused()
    await password_flow.locator("#oauth_username").fill(email)
    await password_flow.locator("#oauth_password").fill(PASSWORD)
    await password_flow.locator("button.authorize").click()
    await expect(password_flow.get_by_role("heading", name="Authorized")).to_be_visible()
    await password_flow.locator("button.btn-done").click()
    await expect(dialog).to_have_count(0)

    operation = page.locator(".opblock").filter(
        has=page.locator('.opblock-summary-path[data-path="/auth/session-status"]')
    )
    await operation.locator(".opblock-summary").click()
    await operation.locator("button.try-out__btn").click()
    await operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table tr.response td.response-col_status")
    await expect(status).to_have_text(re.compile(r"^\s*200"))
    body = operation.locator(
        ".live-responses-table tr.response td.response-col_description pre"
    ).first
    await expect(body).to_contain_text(email)

    # Logout declares the bearer scheme, so Try it out sends the Authorize token (it met 401).
    logout = page.locator(".opblock").filter(
        has=page.locator('.opblock-summary-path[data-path="/auth/logout"]')
    )
    await logout.locator(".opblock-summary").click()
    await logout.locator("button.try-out__btn").click()
    await logout.locator("button.execute").click()
    logout_status = logout.locator(".live-responses-table tr.response td.response-col_status")
    await expect(logout_status).to_have_text(re.compile(r"^\s*204"))

    assert foreign == [], "the docs page must not load anything from elsewhere"
    records = await records_of(service.database_url, email)
    assert records.event_names().count("login.succeeded") == 1
    assert [s.revoke_reason for s in records.sessions] == ["logout"]
    assert watch.errors == []


async def test_docs_explorer_refreshes_an_expired_token_and_retries(
    context: BrowserContext, service: Service
) -> None:
    """The explorer keeps its session: past the access token's lifetime, Try it out on
    /auth/me meets token_expired, the plugin (app/static/docs-session.js) refreshes with the
    password flow's refresh token, stores the new pair and retries once: 200, not 401."""
    watch = PageWatch()
    email = await create_user(service.database_url)
    page = watch.attach(await context.new_page())
    await page.goto(f"{service.base}/docs")
    await page.click("button.btn.authorize")
    dialog = page.locator(".modal-ux")
    password_flow = dialog.locator(".auth-container").filter(has_text="(OAuth2, password)")
    await password_flow.locator("#oauth_username").fill(email)
    await password_flow.locator("#oauth_password").fill(PASSWORD)
    await password_flow.locator("button.authorize").click()
    await expect(password_flow.get_by_role("heading", name="Authorized")).to_be_visible()
    await password_flow.locator("button.btn-done").click()
    stored = "JSON.parse(localStorage.authorized).OAuth2PasswordBearer.token.access_token"
    first_token = await page.evaluate(stored)

    await asyncio.sleep(ACCESS_TTL + 1)
    operation = page.locator(".opblock").filter(
        has=page.locator('.opblock-summary-path[data-path="/auth/me"]')
    )
    await operation.locator(".opblock-summary").click()
    await operation.locator("button.try-out__btn").click()
    await operation.locator("button.execute").click()
    status = operation.locator(".live-responses-table tr.response td.response-col_status")
    await expect(status).to_have_text(re.compile(r"^\s*200"))
    assert await page.evaluate(stored) != first_token, "the new token is stored"
    records = await records_of(service.database_url, email)
    assert records.event_names().count("login.succeeded") == 1
    assert [s.revoke_reason for s in records.sessions] == [None]
    assert watch.errors == []


CSP_VIOLATIONS = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation",
    (event) => window.cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`));
"""


async def test_pages_run_under_their_csp_and_no_other_origin_frames_them(
    context: BrowserContext, service: Service
) -> None:
    """The demo, Swagger UI and ReDoc work under their Content-Security-Policy (nothing they
    use is blocked: ReDoc's "by Redocly" logo from its CDN is gone), and a page of another
    origin cannot show one in a frame."""
    watch = PageWatch()
    await context.add_init_script(CSP_VIOLATIONS)
    page = watch.attach(await context.new_page())
    shown = {
        "/demo": "#login-form",
        "/docs": ".swagger-ui .opblock-summary-path >> nth=0",
        "/redoc": ".api-content h2 >> nth=0",
    }
    for path, selector in shown.items():
        response = await page.goto(f"{service.base}{path}")
        assert response is not None
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        await expect(page.locator(selector)).to_be_visible()
        await page.wait_for_load_state("networkidle")
        violations = set(await page.evaluate("window.cspViolations"))
        assert violations == set(), path

    refusals: list[str] = []
    with attacker_server() as port:
        evil = watch.attach(await context.new_page())
        evil.on("console", lambda message: refusals.append(message.text))
        await evil.goto(f"http://127.0.0.1:{port}/")
        await evil.set_content(f'<iframe src="{service.base}/demo"></iframe>')
        await evil.wait_for_load_state("networkidle")
        framed = evil.frames[1]
        assert await framed.locator("#status").count() == 0
        assert any("frame-ancestors 'none'" in text for text in refusals), refusals
    assert watch.errors == []


async def test_scenarios_that_wait_on_real_time(
    real_time_scenarios: asyncio.Task[None] | None,
) -> None:
    """Last in the module: the outcome of the three real-time scenarios started with it
    (see `real_time_scenarios`); any failure of theirs is raised here."""
    assert real_time_scenarios is not None
    await asyncio.wait_for(real_time_scenarios, timeout=90)
