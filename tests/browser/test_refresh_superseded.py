"""auth-client.js meets `refresh_token_superseded` in a real browser: not a logout.

Two real servers on one PostgreSQL database. The page (served by A) refreshes while A is stalled
(SIGSTOP): its request, carrying refresh token R1, waits in A's listen backlog. Meanwhile another
tab of the same browser refreshes through B, R1 -> R2 -> R3, and its answers leave R3 in the
cookie jar. A wakes and answers the page's R1 with `refresh_token_superseded`; the client must
take that as "someone else refreshed already" and refresh again with the cookie as it now is.

Chromium and Playwright as tests/browser/test_browser.py (whose helpers this module uses).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
from collections.abc import Iterator

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext

from tests.browser.test_browser import (
    BASE_ENV,
    PageWatch,
    Service,
    access_token,
    create_user,
    login,
    open_demo,
    records_of,
    session_ends,
    session_id,
)
from tests.support.servers import started_together, uvicorn_server

pytestmark = pytest.mark.slow

REFRESH_COOKIE = "__Secure-refresh_token"


@contextlib.contextmanager
def _paused(process: subprocess.Popen[bytes]) -> Iterator[None]:
    process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        process.send_signal(signal.SIGCONT)


async def _refresh_cookie(context: BrowserContext) -> str:
    values = {c.get("value") for c in await context.cookies() if c.get("name") == REFRESH_COOKIE}
    assert len(values) == 1, values  # one token, under the refresh and the logout paths
    value = values.pop()
    assert isinstance(value, str)
    return value


async def _set_refresh_cookie(context: BrowserContext, token: str) -> None:
    """What another tab's refresh answers do to the shared cookie jar."""
    await context.add_cookies(
        [
            {
                "name": REFRESH_COOKIE,
                "value": token,
                "domain": c.get("domain", ""),
                "path": c.get("path", "/"),
                "secure": c.get("secure", True),
                "httpOnly": c.get("httpOnly", True),
                "sameSite": c.get("sameSite", "Strict"),
            }
            for c in await context.cookies()
            if c.get("name") == REFRESH_COOKIE
        ]
    )


async def test_superseded_refresh_is_not_a_logout(browser: Browser, postgres_url: str) -> None:
    email = await create_user(postgres_url)
    servers = started_together(
        uvicorn_server(postgres_url, env=BASE_ENV), uvicorn_server(postgres_url, env=BASE_ENV)
    )
    [(a, process_a), (b, _)] = await asyncio.to_thread(servers.__enter__)
    context = await browser.new_context()
    context.set_default_timeout(10_000)
    try:
        watch = PageWatch()
        service = Service(base=a.replace("127.0.0.1", "localhost"), database_url=postgres_url)
        page = await open_demo(context, service, watch)
        await login(page, email)
        sid = await session_id(page)
        r1 = await _refresh_cookie(context)

        with _paused(process_a):
            async with page.expect_request("**/auth/refresh"):
                refreshed = asyncio.create_task(
                    page.evaluate("window.authDemo.client.refresh().then(s => s && s.id)")
                )
            await asyncio.sleep(0.3)  # the request waits in A's listen backlog
            # Another tab refreshes first, through B, twice; the jar ends up holding R3.
            async with httpx.AsyncClient(base_url=b, timeout=10) as other_tab:
                r2 = await other_tab.post("/auth/refresh", json={"refresh_token": r1})
                assert r2.status_code == 200, r2.text
                r3 = await other_tab.post(
                    "/auth/refresh", json={"refresh_token": r2.json()["refresh_token"]}
                )
                assert r3.status_code == 200, r3.text
            await _set_refresh_cookie(context, r3.json()["refresh_token"])
            assert not refreshed.done()

        assert await asyncio.wait_for(refreshed, timeout=15) == sid
        assert await session_ends(page) == []
        assert await access_token(page) is not None
        me = await page.evaluate("window.authDemo.client.fetch('/auth/me').then(r => r.status)")
        assert me == 200
        records = await records_of(postgres_url, email)
        names = records.event_names()
        assert "refresh.superseded" in names, names  # the page's R1, answered by A
        assert "refresh.reuse_detected" not in names, names
        assert [s.revoked_at for s in records.sessions] == [None]
        assert watch.errors == []
    finally:
        await context.close()
        await asyncio.to_thread(servers.__exit__, None, None, None)
