"""Rotations when three tabs start their clients at the same instant, load after load.

    .venv/bin/python -m tests.engines.measure_starts --loads 20 chromium firefox webkit

One user, one session per engine; each load navigates the three tabs to the test page with
the same `start_at`, waits until all three are logged in, and counts the `refresh.rotated`
audit rows the load added (single flight: exactly 1). ENGINES_CLIENT_FILE measures another
build of the client (tests/engines/page_app.py). Not a test: it reports, for issue 19's
closing figures and for work on the client's single flight.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from app.core import migrate
from tests.engines.conftest import ENGINES, open_engine, page_server
from tests.engines.test_engines import login, open_tab, records_of, state, until
from tests.support.servers import create_user_in


async def _rotations(database_url: str, email: str) -> int:
    events = (await records_of(database_url, email)).events
    assert "refresh.reuse_detected" not in [e.event for e in events]
    return sum(e.event == "refresh.rotated" for e in events)


async def measure(name: str, loads: int, query: str = "") -> list[int]:
    folder = Path(tempfile.mkdtemp(prefix=f"starts-{name}-"))
    database_url = f"sqlite+aiosqlite:///{folder / 'auth.db'}"
    await asyncio.to_thread(migrate.upgrade, database_url)
    counts: list[int] = []
    with page_server(database_url, folder / "tls" if name == "webkit" else None) as service:
        async with open_engine(name) as engine:
            context = await engine.new_context()
            try:
                email = await create_user_in(database_url, prefix="starts")
                first = await open_tab(context, service)
                await login(first, email)
                await first.goto(f"{service.base}/engines/blank")
                tabs = [await context.new_tab() for _ in range(3)]
                for _ in range(loads):
                    before = await _rotations(database_url, email)
                    start_at = int(time.time() * 1000) + 1500
                    for tab in tabs:
                        url = f"{service.base}/engines/tab?start_at={start_at}{query}"
                        await tab.goto(url)
                    for tab in tabs:
                        await until(tab, "!!(window.harness && window.harness.started)", 15)
                        started = await state(tab)
                        if started["status"] != "logged in":
                            print(f"{name}: a tab started {started}", flush=True)
                    await asyncio.sleep(0.7)  # a second rotation would have landed by now
                    counts.append(await _rotations(database_url, email) - before)
            finally:
                await context.close()
    return counts


async def _main(loads: int, engines: list[str], query: str) -> None:
    for name in engines:
        counts = await measure(name, loads, query)
        doubled = sum(count > 1 for count in counts)
        print(
            f"{name}: {loads} loads, {sum(counts)} rotations, {doubled} loads rotated more "
            f"than once: {counts}",
            flush=True,
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--nolocks", action="store_true", help="the BroadcastChannel fallback")
    parser.add_argument("engines", nargs="*", choices=ENGINES, default=ENGINES)
    arguments = parser.parse_args()
    query = "&nolocks" if arguments.nolocks else ""
    asyncio.run(_main(arguments.loads, arguments.engines, query))
