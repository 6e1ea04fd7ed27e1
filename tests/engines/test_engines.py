"""Browser mode, the same scenarios in Chromium, Firefox ESR and WebKit (Debian's builds).

Each scenario drives the browser client as the service serves it (/static/auth-client.js)
from a small page of this suite (page_app.py), against the real service in a uvicorn process
and its SQLite database, and checks what the database recorded. Each has its own cookie jar
and its own user. The scenarios that mostly wait on real clocks (5 s tokens, a 10 s idle
timeout) start together in the background when an engine's tests begin; their tests collect
the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.core.db import create_engine, table_of
from app.sessions.models import RefreshToken, Session
from tests.conftest import PASSWORD
from tests.engines.conftest import (
    ACCESS_TTL,
    FIGURES,
    IDLE_TIMEOUT,
    Bench,
    Service,
    page_server,
)
from tests.engines.drivers import Context, Tab
from tests.support.servers import create_user_in

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("background")]

REFRESH_EVENTS = ("refresh.rotated", "refresh.retried", "refresh.superseded")


# -------------------------------------------------------------------------------- helpers


async def until(tab: Tab, expression: str, within: float = 10) -> Any:
    """The expression's value once it is truthy (polled: the same way in every engine)."""
    give_up = time.monotonic() + within
    while True:
        value = await tab.eval(expression)
        if value:
            return value
        if time.monotonic() > give_up:
            state = await tab.eval("window.harness && window.harness.state()")
            raise AssertionError(f"not within {within} s: {expression}; page: {state}")
        await asyncio.sleep(0.05)


async def open_tab(context: Context, service: Service, query: str = "") -> Tab:
    tab = await context.new_tab()
    await tab.goto(f"{service.base}/engines/tab{query}")
    await until(tab, "!!(window.harness && window.harness.started)")
    return tab


async def state(tab: Tab) -> dict[str, Any]:
    value = await tab.eval("harness.state()")
    assert isinstance(value, dict)
    return value


async def login(tab: Tab, email: str) -> str:
    assert (await state(tab))["status"] == "logged out"
    sid = await tab.eval(f"harness.login({json.dumps(email)}, {json.dumps(PASSWORD)})")
    assert isinstance(sid, str), sid
    # The cookies were stored: the readable CSRF cookie is there (WebKit over http://localhost
    # drops it with the other Secure cookies, and the next refresh would be a silent logout).
    assert await tab.eval("document.cookie.includes('__Host-csrf_token=')")
    return sid


async def me(tab: Tab, email: str) -> None:
    answer = await tab.eval("harness.me()")
    assert answer == {"status": 200, "email": email, "code": None}, answer


@contextlib.asynccontextmanager
async def scenario(bench: Bench) -> AsyncIterator[tuple[Context, str]]:
    """A fresh cookie jar and a fresh user; no uncaught error in any page."""
    context = await bench.engine.new_context()
    try:
        yield context, await create_user_in(bench.service.database_url, prefix="engine")
    finally:
        await context.close()


@dataclass
class Records:
    sessions: list[Any]
    events: list[Any]  # of the user's sessions, in order
    tokens: list[Any]

    def names(self) -> list[str]:
        return [e.event for e in self.events]

    def since(self, moment: datetime, *names: str) -> list[Any]:
        return [e for e in self.events if e.created_at >= moment and e.event in names]


async def records_of(database_url: str, email: str) -> Records:
    from app.users.models import User

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
    return Records(sessions=sessions, events=events, tokens=tokens)


async def no_page_errors(*tabs: Tab) -> None:
    for tab in tabs:
        assert (await state(tab))["errors"] == []


# ------------------------------------------------------------------ the quick scenarios


async def test_login(bench: Bench) -> None:
    async with scenario(bench) as (context, email):
        tab = await open_tab(context, bench.service)
        features = (await state(tab))["features"]
        assert features["secure"] is True  # Web Locks and WebCrypto need a secure context
        FIGURES[bench.engine.name]["Web Locks"] = features["locks"]
        FIGURES[bench.engine.name]["BroadcastChannel"] = features["channel"]
        sid = await login(tab, email)
        await me(tab, email)
        assert (await state(tab))["status"] == "logged in"
        records = await records_of(bench.service.database_url, email)
        assert [(s.id, s.revoked_at) for s in records.sessions] == [(uuid.UUID(sid), None)]
        assert records.names() == ["login.succeeded"]
        await no_page_errors(tab)


async def test_reload_keeps_the_session(bench: Bench) -> None:
    """The access token lives in the page's memory only; the HttpOnly cookie brings the
    session back after a reload, through a silent refresh."""
    async with scenario(bench) as (context, email):
        tab = await open_tab(context, bench.service)
        sid = await login(tab, email)
        token = (await state(tab))["token"]
        assert token
        assert token not in await tab.eval(
            "JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage),"
            " document.cookie])"
        )
        await tab.goto(f"{bench.service.base}/engines/tab")
        await until(tab, "!!(window.harness && window.harness.started)")
        after = await state(tab)
        assert after["status"] == "logged in", after
        assert after["sid"] == sid  # the same session, not a new login
        assert after["token"] not in (None, token)
        await me(tab, email)
        records = await records_of(bench.service.database_url, email)
        assert records.names() == ["login.succeeded", "refresh.rotated"]
        await no_page_errors(tab)


async def test_logout_in_one_tab_reaches_the_others_within_2s(bench: Bench) -> None:
    async with scenario(bench) as (context, email):
        tabs = [await open_tab(context, bench.service)]
        await login(tabs[0], email)
        tabs += [await open_tab(context, bench.service) for _ in range(2)]
        for tab in tabs:
            assert (await state(tab))["status"] == "logged in"
        started = time.monotonic()
        await tabs[0].eval("harness.logout()")
        for tab in tabs:
            await until(tab, "harness.status === 'logged out'", within=2)
        elapsed = time.monotonic() - started
        assert elapsed < 2, elapsed
        FIGURES[bench.engine.name]["logout reached 3 tabs (s)"] = round(elapsed, 2)
        for tab in tabs:
            after = await state(tab)
            assert after["token"] is None
            assert after["ends"] == ["logged_out"]  # once each
        records = await records_of(bench.service.database_url, email)
        assert [s.revoke_reason for s in records.sessions] == ["logout"]
        # The cookies are gone: a reload does not bring the session back.
        await tabs[1].goto(f"{bench.service.base}/engines/tab")
        await until(tabs[1], "!!(window.harness && window.harness.started)")
        assert (await state(tabs[1]))["status"] == "logged out"
        await no_page_errors(*tabs)


ATTACKS = """(async (target) => {
  const outcome = async (promise) => {
    try { const r = await promise; return r.type === "opaque" ? "opaque" : r.status; }
    catch (error) { return error.name; }
  };
  const results = {};
  for (const path of ["/auth/refresh", "/auth/logout"]) {
    // What the real client sends: needs a CORS preflight, which a foreign origin fails.
    results[path + " cors json"] = await outcome(fetch(target + path, {
      method: "POST", credentials: "include", body: "{}",
      headers: {"Content-Type": "application/json", "Session-Transport": "cookie",
                "X-CSRF-Token": "guess"}}));
    // A "simple" request needs no preflight; the server must refuse it.
    results[path + " no-cors text"] = await outcome(fetch(target + path, {
      method: "POST", credentials: "include", mode: "no-cors", body: "{}",
      headers: {"Content-Type": "text/plain"}}));
  }
  return results;
})(%s)"""

FORM_POST = """(() => {
  const form = document.createElement("form");
  form.method = "post"; form.enctype = "text/plain"; form.action = %s;
  const input = document.createElement("input");
  input.name = "a"; input.value = "b"; form.appendChild(input);
  document.body.appendChild(form);
  form.submit();
  return true;
})()"""


async def test_cross_origin_page_can_neither_refresh_nor_log_out(bench: Bench) -> None:
    """A page of another site (the same server as 127.0.0.1) calls refresh and logout with the
    browser's credentials, and posts a form to logout: nothing happens to the session."""
    service = bench.service
    async with scenario(bench) as (context, email):
        victim = await open_tab(context, service)
        sid = await login(victim, email)
        before = await records_of(service.database_url, email)

        evil = await context.new_tab()
        await evil.goto(f"{service.other_origin}/engines/blank")
        results = await evil.eval(ATTACKS % json.dumps(service.base))
        assert isinstance(results, dict)
        for name, outcome in results.items():
            expected = "TypeError" if "cors json" in name else "opaque"
            assert outcome == expected, (name, outcome)
        await evil.eval(FORM_POST % json.dumps(f"{service.base}/auth/logout"))
        await asyncio.sleep(1)  # the form's navigation lands (and is refused)

        after = await records_of(service.database_url, email)
        assert after.names() == before.names()  # no rotation, no logout
        assert len(after.tokens) == len(before.tokens)
        assert [(s.id, s.revoked_at) for s in after.sessions] == [(uuid.UUID(sid), None)]
        await me(victim, email)
        assert (await state(victim))["ends"] == []
        await no_page_errors(victim)


async def test_http_localhost_keeps_secure_cookies_as_documented(bench: Bench) -> None:
    """What docs/engines.md tells developers: over http://localhost Chromium and Firefox keep
    the service's Secure cookies, WebKitGTK drops them (WebKit bug 281149), so the session
    does not survive a reload there. Fails when an engine changes its mind: update the docs."""
    kept = bench.engine.name != "webkit"
    server = page_server(bench.service.database_url, None)
    service = await asyncio.to_thread(server.__enter__)
    try:
        async with scenario(bench) as (context, email):
            tab = await open_tab(context, service)
            outcome = await tab.eval(
                f"harness.login({json.dumps(email)}, {json.dumps(PASSWORD)})"
                ".then(() => 'ok', (e) => 'refused: ' + (e.code || e))"
            )
            assert outcome == "ok" or not kept, outcome  # a client may report the loss
            stored = await tab.eval("document.cookie.includes('__Host-csrf_token=')")
            assert stored is kept
            await tab.goto(f"{service.base}/engines/tab")
            await until(tab, "!!(window.harness && window.harness.started)")
            after = await state(tab)
            assert (after["status"] == "logged in") is kept, after
    finally:
        await asyncio.to_thread(server.__exit__, None, None, None)


# ------------------------------------------------ the scenarios that wait on real clocks


async def _tokens_expire_unnoticed_while_clicking(bench: Bench) -> None:
    """5 s access tokens expire several times while the user works: refreshes while they
    click, and one before the first request after a pause. No request ever sees a 401."""
    async with scenario(bench) as (context, email):
        tab = await open_tab(context, bench.service)
        await login(tab, email)
        tokens = {(await state(tab))["token"]}
        give_up = time.monotonic() + 3 * ACCESS_TTL
        while len(tokens) < 3:  # two refreshes while clicking
            assert time.monotonic() < give_up, "no refresh while the user clicked"
            await me(tab, email)
            tokens.add((await state(tab))["token"])
            await asyncio.sleep(0.5)
        await asyncio.sleep(ACCESS_TTL + 0.5)  # the user reads: the last token lapses
        for _ in range(3):
            await me(tab, email)
            await asyncio.sleep(0.3)
        after = await state(tab)
        assert after["status"] == "logged in"
        assert after["ends"] == []
        records = await records_of(bench.service.database_url, email)
        assert records.names().count("refresh.rotated") >= 3
        assert "refresh.reuse_detected" not in records.names()
        assert [s.revoked_at for s in records.sessions] == [None]
        await no_page_errors(tab)


async def _three_tabs_share_one_session(bench: Bench, fallback: bool) -> None:
    """Three tabs start their clients at the same instant, then the user works in all three
    for three token lifetimes. One session, one refresh per token lifetime, never a reuse
    detection. `fallback`: Web Locks hidden, the client's BroadcastChannel protocol."""
    query = "?nolocks" if fallback else ""
    label = "3 tabs, BroadcastChannel fallback" if fallback else "3 tabs, Web Locks"
    async with scenario(bench) as (context, email):
        # The three tabs load first, their clients not started: under load, loading them
        # one after another (WebDriver) took longer than the 10 s idle timeout, and the
        # session had expired by the time they started.
        tabs = [await context.new_tab() for _ in range(3)]
        sep = "&" if query else "?"
        for tab in tabs:
            await tab.goto(f"{bench.service.base}/engines/tab{query}{sep}manual")
            await until(tab, "!!window.harness", within=15)
        first = await open_tab(context, bench.service, query)
        sid = await login(first, email)
        # Its client leaves; the window stays (a WebDriver session ends with its last window).
        await first.goto(f"{bench.service.base}/engines/blank")
        await asyncio.sleep(1)  # the session row's first touch is behind us
        login_records = await records_of(bench.service.database_url, email)
        mark = login_records.events[-1].created_at

        start_at = int(time.time() * 1000) + 1000  # after the slowest engine told all three
        for tab in tabs:
            await tab.eval(f"harness.startAt({start_at})")
        late = 0
        for tab in tabs:
            await until(tab, "!!(window.harness && window.harness.started)", within=15)
            started = await state(tab)
            assert started["features"]["locks"] is (not fallback)
            if started["sid"] != sid and fallback:
                # Seen once in about eight Firefox runs under load: `ready` gave a tab no
                # session, then it adopted a peer's. Counted (issue 19: a live session must
                # not look logged out), and it must recover at once.
                late += 1
                await until(tab, f"harness.sid() === {json.dumps(sid)}", within=2)
                started = await state(tab)
            # `ready` gave every tab the session: none showed a live session as logged out.
            assert started["sid"] == sid, (
                started,
                (await records_of(bench.service.database_url, email)).names(),
            )
        await asyncio.sleep(0.5)
        start = await records_of(bench.service.database_url, email)
        start_rotations = len(start.since(mark, "refresh.rotated"))
        window_mark = start.events[-1].created_at

        began = time.monotonic()
        while time.monotonic() - began < 3 * ACCESS_TTL:  # clicks, round the tabs
            for tab in tabs:
                await me(tab, email)
            await asyncio.sleep(0.3)
        window = time.monotonic() - began

        records = await records_of(bench.service.database_url, email)
        refreshes = records.since(window_mark, *REFRESH_EVENTS)
        rotations = [e for e in refreshes if e.event == "refresh.rotated"]
        assert "refresh.reuse_detected" not in records.names(), records.names()
        assert [(s.id, s.revoked_at) for s in records.sessions] == [(uuid.UUID(sid), None)]
        assert all(t.revoked_at is None for t in records.tokens)
        assert rotations, "nobody refreshed in three token lifetimes"
        per_lifetime = len(refreshes) / len(rotations)
        FIGURES[bench.engine.name][label] = (
            f"{len(refreshes)} refreshes / {len(rotations)} token lifetimes = "
            f"{per_lifetime:.2f} per lifetime ({len(rotations) / (window / ACCESS_TTL):.2f} "
            f"rotations per {ACCESS_TTL} s; start: {start_rotations} rotation(s)"
            + (f"; {late} tab(s) started without the session" if late else "")
            + ")"
        )
        # Tabs that start together make one rotation between them (before e0f19a7 the client
        # made two on about one start in four in WebKit, one in twenty in Chromium). The
        # fallback's announcements can still cross under load (seen once in 15 runs).
        assert 1 <= start_rotations <= (2 if fallback else 1), start_rotations
        if not fallback:
            # Single flight: one refresh per token lifetime, the tabs adopt it; the server
            # never even sees a retry.
            assert per_lifetime == 1, [e.event for e in refreshes]
        else:
            # Announcements can cross (the server then answers a retry; WebKit on two busy
            # cores reached 2.0), but the tabs take turns: a fallback that never announced
            # made 3.25, each of the three tabs refreshing every lifetime.
            assert per_lifetime < 2.5, [e.event for e in refreshes]
        for tab in tabs:
            after = await state(tab)
            assert after["ends"] == []
            assert after["status"] == "logged in"
        await no_page_errors(*tabs)


async def _idle_timeout_shows_session_expired_everywhere(bench: Bench) -> None:
    """Nobody works: at the idle timeout both open tabs say "session expired", by themselves
    and once each; the session was not revoked, it expired."""
    async with scenario(bench) as (context, email):
        tabs = [await open_tab(context, bench.service)]
        await login(tabs[0], email)
        logged_in = time.monotonic()
        # The second tab refreshes on load, or adopts the first tab's token without asking
        # the server: the last activity is the login or that refresh.
        tabs.append(await open_tab(context, bench.service))
        for tab in tabs:
            await until(
                tab,
                "harness.status === 'session expired'",
                within=IDLE_TIMEOUT + ACCESS_TTL + 10,
            )
        seen = datetime.now(UTC)
        elapsed = time.monotonic() - logged_in
        assert elapsed >= IDLE_TIMEOUT - 1, elapsed  # not before the idle timeout
        await asyncio.sleep(1.5)  # later checks do not report it again
        for tab in tabs:
            after = await state(tab)
            assert after["token"] is None
            assert after["ends"] == ["session_expired"]
        records = await records_of(bench.service.database_url, email)
        [session] = records.sessions
        assert session.revoked_at is None
        # Not before the server's own idle deadline (which the last activity set).
        assert session.idle_expires_at <= seen, (session.idle_expires_at, seen)
        assert "refresh.reuse_detected" not in records.names()
        await no_page_errors(*tabs)


SLOW: dict[str, Callable[[Bench], Coroutine[Any, Any, None]]] = {
    "clicking": _tokens_expire_unnoticed_while_clicking,
    "three tabs": lambda bench: _three_tabs_share_one_session(bench, fallback=False),
    "three tabs fallback": lambda bench: _three_tabs_share_one_session(bench, fallback=True),
    "idle": _idle_timeout_shows_session_expired_everywhere,
}


@pytest.fixture(scope="module")
async def background(bench: Bench) -> AsyncIterator[dict[str, asyncio.Task[None]]]:
    tasks: dict[str, asyncio.Task[None]] = {
        name: asyncio.create_task(run(bench)) for name, run in SLOW.items()
    }
    yield tasks
    for task in tasks.values():
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)


async def test_access_tokens_expire_unnoticed_while_clicking(
    background: dict[str, asyncio.Task[None]],
) -> None:
    await background["clicking"]


async def test_three_tabs_share_one_session_one_refresh_at_a_time(
    background: dict[str, asyncio.Task[None]],
) -> None:
    await background["three tabs"]


async def test_three_tabs_without_web_locks_use_the_broadcast_fallback(
    background: dict[str, asyncio.Task[None]],
) -> None:
    await background["three tabs fallback"]


async def test_idle_timeout_shows_session_expired_everywhere(
    background: dict[str, asyncio.Task[None]],
) -> None:
    await background["idle"]
