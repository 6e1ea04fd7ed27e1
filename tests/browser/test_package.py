"""The npm package (clients/js, served as /static/auth-client.js) in Debian's Chromium against
the real service: single flight across 80 clients started on one page load, a rate-limited
refresh that is no logout, and cookies the browser did not store reported as such.

The byte-for-byte check of the served copy against the package's build is the package's own
test (`npm test`, clients/js/test/package.test.js), which `make test` runs.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.browser.conftest import CHROMIUM_ARGS, REQUIRE_BROWSER
from tests.browser.test_browser import (
    ACCESS_TTL,
    BASE_ENV,
    PageWatch,
    Service,
    _serve,
    _sqlite_database,
    create_user,
    login,
    open_demo,
    records_of,
    session_ends,
)
from tests.conftest import PASSWORD

try:
    from playwright.async_api import Browser, BrowserContext, Page, Response, Route, expect
except ImportError:  # pragma: no cover - the dev dependency is missing
    if REQUIRE_BROWSER:
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow

CLIENTS = 80
PAGE_PATH = "/package-test-page"
# One page load starts CLIENTS clients with the default options: one Web Lock, one
# BroadcastChannel, as tabs share them. `window.started` holds what each one's ready gave.
PAGE = f"""<!doctype html><meta charset="utf-8"><title>package</title>
<script type="module">
import {{ createAuthClient }} from "/static/auth-client.js";
const ends = [];
const clients = Array.from({{ length: {CLIENTS} }},
  () => createAuthClient({{ onSessionEnd: ({{ reason }}) => ends.push(reason) }}));
window.pkg = {{ clients, ends, started: null, createAuthClient }};
Promise.all(clients.map((c) => c.ready)).then((sessions) => {{
  window.pkg.started = sessions.map((s) => (s ? s.id : null));
}});
</script>"""


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context()
    ctx.set_default_timeout(15_000)
    yield ctx
    await ctx.close()


@pytest.fixture(scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    # 80 clients' calls queue for SQLite's 4 slots rather than meet 503 overloaded at 100 ms.
    env = {**BASE_ENV, "ADMISSION_MAX_WAIT_MS": "5000"}
    async with _serve(await _sqlite_database(tmp_path_factory), env) as svc:
        yield svc


@pytest.fixture(scope="module")
async def limited_service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    """One rotation per session per 5 s (a sliding window): a reload soon after another
    meets 429."""
    env = {**BASE_ENV, "RATE_LIMITS_ENABLED": "true", "RATE_LIMIT_REFRESH_SESSION": "1/5 seconds"}
    async with _serve(await _sqlite_database(tmp_path_factory), env) as svc:
        yield svc


async def _package_page(context: BrowserContext, service: Service, watch: PageWatch) -> Page:
    async def fulfil(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=PAGE)

    await context.route(f"{service.base}{PAGE_PATH}", fulfil)
    page = watch.attach(await context.new_page())
    return page


async def _load(page: Page, service: Service) -> list[str | None]:
    await page.goto(f"{service.base}{PAGE_PATH}")
    await page.wait_for_function("window.pkg && window.pkg.started !== null")
    started = await page.evaluate("window.pkg.started")
    assert isinstance(started, list)
    return started


async def _refresh_events(service: Service, email: str) -> list[Any]:
    events = (await records_of(service.database_url, email)).events
    return [e for e in events if e.event.startswith("refresh.")]


async def _rotations(service: Service, email: str) -> list[str]:
    return [e.event for e in await _refresh_events(service, email)]


@pytest.mark.parametrize(
    "missing",
    [None, "locks", "BroadcastChannel"],
    ids=["web-locks", "broadcast-fallback", "no-broadcast-channel"],
)
async def test_80_clients_on_one_page_load_rotate_once_per_token_lifetime(
    context: BrowserContext, service: Service, missing: str | None
) -> None:
    """Every page load starts 80 clients at once; the server sees one rotation per load, and
    one more when the token's refresh_after comes while all 80 are in use (each has its own
    timer). Before the fix the next lock holder often missed the broadcast and rotated the
    new cookie again (the issue: 89-93 rotations for 81 loads with 3 clients). Also without
    Web Locks (the channel's announcements), and without BroadcastChannel, where only the
    page's shared record tells the next holder that the token is new."""
    if missing == "locks":
        await context.add_init_script(
            "Object.defineProperty(Navigator.prototype, 'locks', {get: () => undefined})"
        )
    elif missing == "BroadcastChannel":
        await context.add_init_script("delete globalThis.BroadcastChannel")
    watch = PageWatch()
    email = await create_user(service.database_url)
    page = await _package_page(context, service, watch)
    await _load(page, service)
    await page.evaluate(
        "([email, password]) => window.pkg.clients[0].login(email, password)", [email, PASSWORD]
    )
    sid = await page.evaluate("window.pkg.clients[0].session().id")
    assert (await _rotations(service, email)) == []

    loads = 6
    for _ in range(loads):
        before = len(await _rotations(service, email))
        started = await _load(page, service)
        assert started == [sid] * CLIENTS
        # One, or none where the page that is going away still answered with its token.
        assert len(await _rotations(service, email)) - before <= 1
    assert await page.evaluate("!!navigator.locks") is (missing != "locks")
    assert await page.evaluate("typeof BroadcastChannel") == (
        "undefined" if missing == "BroadcastChannel" else "function"
    )
    tokens = await page.evaluate("new Set(window.pkg.clients.map((c) => c.accessToken())).size")
    assert tokens == 1
    rotated = await _rotations(service, email)
    assert set(rotated) == {"refresh.rotated"}, rotated
    loads = len(rotated)  # the rotations of the page loads

    # All 80 in use: each calls the API, so each one's own timer wants a refresh at
    # refresh_after. (4 at a time, as many as the service works on at once on SQLite.)
    statuses = await page.evaluate(
        """async () => {
            const statuses = [];
            const clients = window.pkg.clients;
            for (let i = 0; i < clients.length; i += 4) {
                const batch = clients.slice(i, i + 4).map((c) => c.fetch("/auth/me"));
                for (const response of await Promise.all(batch)) statuses.push(response.status);
            }
            return statuses;
        }"""
    )
    assert statuses == [200] * CLIENTS
    first = await page.evaluate("window.pkg.clients[0].accessToken()")
    await page.wait_for_function(
        "(old) => window.pkg.clients.every((c) => c.accessToken() && c.accessToken() !== old)",
        arg=first,
        timeout=2 * ACCESS_TTL * 1000,
    )
    await asyncio.sleep(1)  # a second rotation of that token would have been sent by now
    later = (await _refresh_events(service, email))[loads:]
    assert [e.event for e in later][:1] == ["refresh.rotated"], later
    # On a slow machine the calls may outlast a token's lifetime, and its successor is then
    # rotated in turn: fine, but never two rotations within one lifetime (5 s tokens,
    # refresh_after 70 % into them).
    assert {e.event for e in later} == {"refresh.rotated"}, later
    gaps = [(b.created_at - a.created_at).total_seconds() for a, b in itertools.pairwise(later)]
    assert all(gap > ACCESS_TTL / 2 for gap in gaps), gaps
    tokens = await page.evaluate("new Set(window.pkg.clients.map((c) => c.accessToken())).size")
    assert tokens == 1
    assert await page.evaluate("window.pkg.ends") == []
    assert watch.errors == []


async def test_a_rate_limited_refresh_is_no_logout(
    context: BrowserContext, limited_service: Service
) -> None:
    """A reload whose refresh meets the per-session limit (429, Retry-After) waits and retries:
    the page never shows "logged out" (auth.ready resolved null on 429 before) and ends up
    logged in on the same session."""
    watch = PageWatch()
    # Every text the status element shows, from the first paint of every load on.
    await context.add_init_script(
        """document.addEventListener("DOMContentLoaded", () => {
            const status = document.getElementById("status");
            if (!status) return;
            window.statusHistory = [status.textContent];
            new MutationObserver(() => window.statusHistory.push(status.textContent))
                .observe(status, {childList: true, characterData: true, subtree: true});
        });"""
    )
    email = await create_user(limited_service.database_url)
    page = await open_demo(context, limited_service, watch)
    await login(page, email)
    refreshes: list[int] = []

    def record(response: Response) -> None:
        if response.url.endswith("/auth/refresh"):
            refreshes.append(response.status)

    page.on("response", record)
    for _ in range(3):  # reloads in quick succession, until one meets the limit
        await page.reload()
        await expect(page.locator("#status")).to_have_text(f"logged in as {email}", timeout=15_000)
        history = await page.evaluate("window.statusHistory")
        assert "logged out" not in history, history
        if 429 in refreshes:
            break
    assert 429 in refreshes, refreshes
    assert refreshes[-1] == 200, refreshes
    assert await session_ends(page) == []
    records = await records_of(limited_service.database_url, email)
    assert [s.revoked_at for s in records.sessions] == [None]
    assert watch.errors == []


async def test_cookies_the_browser_did_not_store_are_reported_at_login(
    chromium_executable: str, service: Service
) -> None:
    """A page on plain http at a name other than localhost is no secure context: Chromium
    refuses the service's Secure cookies there, as WebKitGTK does even on http://localhost.
    Login answers 200, but the client sees the CSRF cookie missing and rejects with
    cookies_not_stored (and logs the orphan session out) instead of a silent logout at the
    first refresh."""
    from playwright.async_api import async_playwright

    port = service.base.rsplit(":", 1)[1]
    base = f"http://authsvc.test:{port}"
    args = [*CHROMIUM_ARGS, "--host-resolver-rules=MAP authsvc.test 127.0.0.1"]
    email = await create_user(service.database_url)
    watch = PageWatch()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=chromium_executable, args=args)
        try:
            context = await browser.new_context()
            context.set_default_timeout(15_000)
            page = watch.attach(await context.new_page())
            await page.goto(f"{base}/demo")
            assert await page.evaluate("window.isSecureContext") is False
            await expect(page.locator("#status")).to_have_text("logged out")
            await page.fill("#email", email)
            await page.fill("#password", PASSWORD)
            await page.click("#login")
            await expect(page.locator("#error")).to_contain_text("cookies_not_stored")
            await expect(page.locator("#status")).to_have_text("logged out")
            assert await page.evaluate("window.authDemo.client.session()") is None
            assert [c.get("name") for c in await context.cookies()] == []
        finally:
            await browser.close()
    # The session the browser could not keep was logged out at once.
    deadline = time.monotonic() + 5
    while True:
        records = await records_of(service.database_url, email)
        if [s.revoke_reason for s in records.sessions] == ["logout"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert [s.revoke_reason for s in records.sessions] == ["logout"]
    assert records.event_names().count("login.succeeded") == 1
    assert watch.errors == []


TABS = 6
# How long the client uses a 5 s token before it rotates it (usableFor in auth-client.js: the
# lifetime less 1 s and a tenth, at least half).
USABLE_S = max(ACCESS_TTL / 2, ACCESS_TTL - 1 - min(1, ACCESS_TTL / 10))


async def test_tabs_loaded_together_rotate_at_most_once_per_load(
    context: BrowserContext, service: Service
) -> None:
    """Tabs (each a realm of its own: only the Web Lock, the channel and IndexedDB join them)
    loaded at once, round after round: at most one rotation per round, and every tab ends
    the round with the same token. A tab that gets the lock after another tab's refresh
    reads the marker that tab committed and asks for the token instead of rotating again,
    also when it opened after the broadcast was sent; a token a tab of the previous round
    still holds is taken as well (no rotation then). Before: 4 to 6 extra rotations in 8
    rounds of 6 tabs."""
    watch = PageWatch()
    email = await create_user(service.database_url)
    first = await open_demo(context, service, watch)
    await login(first, email)
    await first.close()
    tabs = [watch.attach(await context.new_page()) for _ in range(TABS)]
    rounds = []
    for _ in range(8):
        before = len(await _refresh_events(service, email))
        await asyncio.gather(*(tab.goto(f"{service.base}/demo") for tab in tabs))
        for tab in tabs:
            await expect(tab.locator("#status")).to_have_text(f"logged in as {email}")
        tokens = {await tab.evaluate("window.authDemo.client.accessToken()") for tab in tabs}
        assert len(tokens) == 1, tokens
        rounds.append((await _refresh_events(service, email))[before:])
    # No theft, no logout. A retry (refresh.retried: the same successor again) is no second
    # rotation; seen once in a loaded CI run. E.g. a page that goes away while its refresh is
    # in flight drops the lock without telling the others, and the next holder sends the same
    # token again.
    assert {e.event for events in rounds for e in events} <= {"refresh.rotated", "refresh.retried"}
    # One rotation per round, unless the round outlasted the token: a loaded machine can take
    # longer than a 5 s token is usable (USABLE_S) to load six tabs, and its successor is then
    # due. Never two rotations of one token inside its lifetime.
    rotations = [[e for e in events if e.event == "refresh.rotated"] for events in rounds]
    gaps = [
        [(b.created_at - a.created_at).total_seconds() for a, b in itertools.pairwise(events)]
        for events in rotations
    ]
    assert all(gap > USABLE_S for round_gaps in gaps for gap in round_gaps), gaps
    assert watch.errors == []


async def test_a_lone_tab_reloads_without_waiting_for_other_tabs(
    context: BrowserContext, service: Service
) -> None:
    """The marker says another tab's token may still be usable, but no other client holds
    its presence lock: the reloading tab refreshes at once instead of asking on the channel
    and waiting for an answer that cannot come. (A listener on the channel, not a client,
    sees what is asked.)"""
    watch = PageWatch()
    email = await create_user(service.database_url)
    page = await open_demo(context, service, watch)
    await login(page, email)
    listener = watch.attach(await context.new_page())
    await listener.goto(f"{service.base}/healthz")
    await listener.evaluate(
        """() => {
            window.heard = [];
            new BroadcastChannel("authsvc").onmessage = (e) => window.heard.push(e.data.type);
        }"""
    )
    await page.reload()  # well within the login token's lifetime
    await expect(page.locator("#status")).to_have_text(f"logged in as {email}")
    heard = await listener.evaluate("window.heard")
    assert "token" in heard, heard  # the reload's own refresh, announced
    assert "want-token" not in heard, heard
    assert (await _rotations(service, email)) == ["refresh.rotated"]
    assert watch.errors == []


BEARER_PATH = "/package-bearer-page"
BEARER_PAGE = """<!doctype html><meta charset="utf-8"><title>bearer</title>
<script type="module">
import { createAuthClient } from "/static/auth-client.js";
const ends = [];
const client = createAuthClient({
  transport: "bearer", name: "shop", storage: sessionStorage,
  onLogout: ({ reason }) => ends.push(reason),
});
window.pkg = { client, ends, started: undefined };
client.ready.then((session) => { window.pkg.started = session ? session.id : null; });
</script>"""


async def test_bearer_transport_keeps_the_session_in_the_given_storage(
    context: BrowserContext, service: Service
) -> None:
    """transport "bearer": no cookie at all; the refresh token goes in the body and lives in
    the storage the application chose (sessionStorage, under "shop:refresh"), so a reload
    refreshes with it; fetch() sends the access token; logout revokes with it and forgets
    the refresh token."""

    async def fulfil(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=BEARER_PAGE)

    await context.route(f"{service.base}{BEARER_PATH}", fulfil)
    watch = PageWatch()
    email = await create_user(service.database_url)
    page = watch.attach(await context.new_page())
    await page.goto(f"{service.base}{BEARER_PATH}")
    await page.wait_for_function("window.pkg && window.pkg.started !== undefined")
    assert await page.evaluate("window.pkg.started") is None
    sid = await page.evaluate(
        "([e, p]) => window.pkg.client.login(e, p).then((s) => s.id)", [email, PASSWORD]
    )
    stored = await page.evaluate("sessionStorage.getItem('shop:refresh')")
    assert isinstance(stored, str)
    assert stored

    await page.reload()
    await page.wait_for_function("window.pkg && window.pkg.started !== undefined")
    assert await page.evaluate("window.pkg.started") == sid
    assert await page.evaluate("sessionStorage.getItem('shop:refresh')") not in (None, stored)
    status = await page.evaluate("window.pkg.client.fetch('/auth/me').then((r) => r.status)")
    assert status == 200
    assert await context.cookies() == []

    await page.evaluate("window.pkg.client.logout()")
    assert await page.evaluate("sessionStorage.getItem('shop:refresh')") is None
    assert await page.evaluate("window.pkg.ends") == ["logged_out"]
    records = await records_of(service.database_url, email)
    assert [s.revoke_reason for s in records.sessions] == ["logout"]
    assert (await _rotations(service, email)) == ["refresh.rotated"]
    assert watch.errors == []
