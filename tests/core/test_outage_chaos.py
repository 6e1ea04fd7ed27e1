"""Chaos against a real `python -m app serve` under light load, on a private PostgreSQL cluster.

A few clients log in, refresh and verify in a loop while the database is stopped (fast,
immediate, smart), its backends are killed, or the whole server is frozen (SIGSTOP). Wanted,
from docs/deploy.md (Database outages): never a 500, every answer within DB_POOL_TIMEOUT,
/readyz 503 within 2 s while the database is frozen, and afterwards every session refreshes
(none lost, none falsely revoked). The figures are printed: `pytest -rP` shows them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest

from app.core import migrate
from tests.conftest import PASSWORD
from tests.support.pgcluster import PgCluster
from tests.support.servers import create_user_in, uvicorn_server

pytestmark = pytest.mark.slow

POOL_TIMEOUT = 2.0  # DB_POOL_TIMEOUT of the server under test: the documented bound
# The rest of a request's time, beyond its database wait: its own CPU work and both event
# loops'. Alone here 0.5 s holds; with `make test`'s seven groups sharing 2 cores a smart
# shutdown's slowest answer took 2.71 s (a 503 after the pool wait, then CPU queueing).
SLACK = 1.0
READYZ_BOUND = 2.0
CLIENTS = 3


@dataclass
class Tally:
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    slowest: float = 0.0
    failures: list[str] = field(default_factory=list)  # 500s, false revocations, bad bodies

    def record(self, what: str, response: httpx.Response, elapsed: float) -> None:
        self.statuses[response.status_code] += 1
        self.slowest = max(self.slowest, elapsed)
        if response.status_code == 503:
            if "retry-after" not in response.headers:
                self.failures.append(f"{what}: 503 without Retry-After")
        elif response.status_code != 200:
            self.failures.append(f"{what}: {response.status_code} {response.text[:200]}")

    def summary(self) -> str:
        counts = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        return f"{counts}; max latency {self.slowest:.2f} s"


class Client:
    """One user's session: login once, then refresh and verify, keeping the newest tokens."""

    def __init__(self, http: httpx.AsyncClient, email: str) -> None:
        self.http = http
        self.email = email
        self.tokens: dict[str, Any] | None = None

    async def _timed(
        self, tally: Tally, what: str, call: Callable[[], Awaitable[httpx.Response]]
    ) -> httpx.Response:
        started = time.monotonic()
        response = await call()
        tally.record(what, response, time.monotonic() - started)
        return response

    async def step(self, tally: Tally) -> None:
        if self.tokens is None:
            body = {"email": self.email, "password": PASSWORD}
            response = await self._timed(
                tally, "login", lambda: self.http.post("/auth/login", json=body)
            )
            if response.status_code == 200:
                self.tokens = response.json()
            return
        refresh = {"refresh_token": self.tokens["refresh_token"]}
        response = await self._timed(
            tally, "refresh", lambda: self.http.post("/auth/refresh", json=refresh)
        )
        if response.status_code == 200:
            self.tokens = response.json()
        access = {"Authorization": f"Bearer {self.tokens['access_token']}"}
        await self._timed(tally, "verify", lambda: self.http.get("/auth/verify", headers=access))


async def under_load(
    clients: list[Client], disruption: Callable[[], Awaitable[None]], settle: float = 1.0
) -> Tally:
    """Run the clients while `disruption` runs, and for `settle` seconds after it."""
    tally = Tally()
    done = asyncio.Event()

    async def loop(client: Client) -> None:
        while not done.is_set():
            await client.step(tally)
            await asyncio.sleep(0.02)

    workers = [asyncio.create_task(loop(client)) for client in clients]
    try:
        await disruption()
        await asyncio.sleep(settle)
    finally:
        done.set()
        await asyncio.gather(*workers)
    return tally


async def wait_ready(http: httpx.AsyncClient, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while (await http.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, "not ready again after the disruption"
        await asyncio.sleep(0.1)


async def every_session_refreshes(clients: list[Client]) -> None:
    """Sessions survived the disruption: each refreshes now (no 401 refresh_token_reused)."""
    for client in clients:
        if client.tokens is None:
            continue
        refresh = {"refresh_token": client.tokens["refresh_token"]}
        response = await client.http.post("/auth/refresh", json=refresh)
        assert response.status_code == 200, f"{client.email}: {response.text}"
        client.tokens = response.json()


async def terminate_backends(url: str, every: float, lasting: float) -> None:
    """pg_terminate_backend on every other connection to the database, every `every` s."""
    admin = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        deadline = time.monotonic() + lasting
        while time.monotonic() < deadline:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await asyncio.sleep(every)
    finally:
        await admin.close()


@contextlib.contextmanager
def serving(url: str) -> Iterator[str]:
    env = {"DB_POOL_TIMEOUT": str(POOL_TIMEOUT), "DB_POOL_SIZE": "5"}
    with uvicorn_server(url, serve=True, env=env) as (base_url, _process):
        yield base_url


async def test_no_500_and_bounded_answers_through_database_chaos(pg_cluster: PgCluster) -> None:
    await asyncio.to_thread(migrate.upgrade, pg_cluster.url)
    emails = [await create_user_in(pg_cluster.url) for _ in range(CLIENTS)]
    figures: dict[str, Tally] = {}
    with serving(pg_cluster.url) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            clients = [Client(http, email) for email in emails]

            async def restart_after(mode: str) -> None:
                await asyncio.sleep(0.3)
                await asyncio.to_thread(pg_cluster.stop, mode)
                await asyncio.sleep(0.5)
                await asyncio.to_thread(pg_cluster.start)

            async def smart() -> None:
                await asyncio.sleep(0.3)
                # Our pooled connections keep a smart shutdown waiting, refusing every new
                # connection ("the database system is shutting down") meanwhile.
                await asyncio.to_thread(pg_cluster.stop, "smart", wait=False)
                await asyncio.sleep(1.5)
                await asyncio.to_thread(pg_cluster.stop, "fast")
                await asyncio.to_thread(pg_cluster.start)

            async def frozen() -> None:
                await asyncio.sleep(0.3)
                pids = pg_cluster.freeze()
                try:
                    started = time.monotonic()
                    readyz = await http.get("/readyz")
                    elapsed = time.monotonic() - started
                    assert readyz.status_code == 503, readyz.text
                    assert elapsed < READYZ_BOUND, f"/readyz took {elapsed:.2f} s while frozen"
                    await asyncio.sleep(POOL_TIMEOUT + 1.5 - elapsed)
                finally:
                    pg_cluster.thaw(pids)

            scenarios: dict[str, Callable[[], Awaitable[None]]] = {
                "fast shutdown": lambda: restart_after("fast"),
                "immediate shutdown": lambda: restart_after("immediate"),
                "smart shutdown": smart,
                "pg_terminate_backend loop": lambda: terminate_backends(
                    pg_cluster.url, every=0.3, lasting=2.0
                ),
                "SIGSTOP": frozen,
            }
            for name, disruption in scenarios.items():
                await wait_ready(http)
                figures[name] = await under_load(clients, disruption)
                await wait_ready(http)
                await every_session_refreshes(clients)

    report = "\n".join(f"{name}: {tally.summary()}" for name, tally in figures.items())
    print(report)  # the figures the issue asks for
    for name, tally in figures.items():
        assert not tally.failures, f"{name}: {tally.failures[:5]}\n{report}"
        assert set(tally.statuses) <= {200, 503}, f"{name}\n{report}"
        assert tally.statuses[200] > 0, f"{name}: no success at all\n{report}"
        assert tally.slowest < POOL_TIMEOUT + SLACK, f"{name}: too slow\n{report}"
