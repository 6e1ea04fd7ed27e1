"""`python -m bench.soak`: the logout-free hour. Simulated users work through the nginx recipe
on three replicas, PostgreSQL through PgBouncer and Redis, while faults are injected; at the end
no one may have been logged out who did not log out.

Topology (all private, never the machine's shared servers): a PostgreSQL cluster, PgBouncer in
transaction pooling in front of it, REPLICAS `python -m app serve` processes (revocation push on
the direct URL), a redis-server, and nginx with deploy/nginx/authsvc.conf.

Each user, as a browser with 2-5 tabs (auth-client.js's model): logs in once; every tab calls
the API (`GET /auth/me`, which slides the idle timeout) after idle gaps that stay under the idle
timeout; the access token is refreshed once per lifetime for all tabs (single flight); 2 % of
refresh responses are lost on the way back and the same token is sent again (a retry must get
the same successor); 429/502/503/504 and network errors are retried after Retry-After or a short
backoff, never taken as a logout; now and then a user logs out, pauses, and logs in again.

Faults: a replica SIGKILLed and restarted (every 10 minutes in the hour; at 20 % and 80 % of a
shorter run), PostgreSQL down for 10 s (at 45 %), Redis restarted empty (at 65 %).

Invariants, checked at the end (exit status 0 when all hold): 0 false logouts (a 401 on a session
the user did not end), 0 lost logouts (a 204 logout whose session is not revoked), 0 responses
500, 0 retries answered with another successor, no refresh token with two successors, no reuse
detected, no session revoked for any reason but the user's logout, and every user's session
alive at the end unless the user was between a logout and the next login.

Usage: python -m bench.soak [--users 1000] [--minutes 60]  (a 5-minute, 100-user run is a test,
in `make test`: tests/soak/test_soak.py)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import signal
import sys
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx

from bench.gateway import nginx_in_front
from bench.pgbouncer import pgbouncer, through
from bench.processes import free_port
from tests.support.pgcluster import PgCluster, private_postgres
from tests.support.redisserver import PrivateRedis, private_redis
from tests.support.servers import create_user_in, started_together, uvicorn_server

PASSWORD = "correct horse battery staple"  # tests.conftest.PASSWORD: create_user_in's
REPLICAS = 3
ACCESS_TTL = 60  # seconds: a refresh per user per minute
IDLE_TIMEOUT = 300
LOST_RESPONSES = 0.02
RETRYABLE = frozenset({429, 502, 503, 504})
# Each tab calls the API after an idle gap this long on average (exponential, never past half
# the idle timeout): 1,000 users make about 120 calls and 24 refreshes a second.
MEAN_GAP = 30.0
GIVE_UP_AFTER = 120.0  # seconds of "try again" answers before a user counts as logged out
DRIVER_LAG_LIMIT = 5.0  # seconds; the reuse interval is 30
# PgBouncer's server connections: within docs/scaling.md's rule for the private cluster's
# max_connections (50): twice this (cancel requests) plus a LISTEN per replica and room.
SERVER_CONNECTIONS = 12


@dataclass
class Tally:
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    network_errors: int = 0
    false_logouts: list[str] = field(default_factory=list)
    logged_out: list[str] = field(default_factory=list)
    retry_mismatches: int = 0
    lost_responses: int = 0
    faults: list[str] = field(default_factory=list)
    driver_lag: float = 0.0  # the longest the simulated users' event loop fell behind (s)
    refusals: collections.Counter[str] = field(default_factory=collections.Counter)
    transport_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    slowest_answer: float = 0.0  # seconds, over every request the users sent

    def took(self, seconds: float) -> None:
        self.slowest_answer = max(self.slowest_answer, seconds)

    def count(self, what: str, response: httpx.Response) -> None:
        self.statuses[f"{what} {response.status_code}"] += 1
        if response.status_code in (400, 401, 403):  # why, by error code
            try:
                code = response.json()["error"]["code"]
            except (ValueError, KeyError, TypeError):
                code = response.text[:80]
            self.refusals[f"{what} {response.status_code} {code}"] += 1


@dataclass
class Session:
    sid: str
    access: str
    refresh: str
    refresh_at: float  # monotonic: when its access token is due for a refresh
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    dead: bool = False


def _wait(response: httpx.Response | None) -> float:
    """Retry-After (capped), or a short backoff with jitter."""
    if response is not None and response.headers.get("retry-after", "").isdigit():
        return min(10.0, float(response.headers["retry-after"])) + random.random()  # noqa: S311
    return 0.25 + random.random() * 0.5  # noqa: S311


class User:
    def __init__(self, client: httpx.AsyncClient, email: str, tally: Tally, mean_life: float):
        self.client, self.email, self.tally, self.mean_life = client, email, tally, mean_life
        self.session: Session | None = None

    async def _send(self, what: str, method: str, path: str, **options: Any) -> httpx.Response:
        """Send until the answer is not "try again", for at most GIVE_UP_AFTER (a user
        would wait longer, but a run must end): the final response."""
        give_up_at, last = time.monotonic() + GIVE_UP_AFTER, None
        while time.monotonic() < give_up_at:
            sent = time.monotonic()
            try:
                last = await self.client.request(method, path, **options)
            except httpx.TransportError as exc:
                self.tally.network_errors += 1
                self.tally.transport_errors[f"{what} {type(exc).__name__}"] += 1
            else:
                self.tally.count(what, last)
                if last.status_code not in RETRYABLE:
                    self.tally.took(time.monotonic() - sent)
                    return last
            self.tally.took(time.monotonic() - sent)
            await asyncio.sleep(_wait(last))
        return last or httpx.Response(599, text=f"no answer for {GIVE_UP_AFTER} s")

    async def login(self) -> bool:
        body = {"email": self.email, "password": PASSWORD}
        response = await self._send("login", "POST", "/auth/login", json=body)
        if response.status_code != 200:
            self.tally.false_logouts.append(f"{self.email}: login {response.status_code}")
            return False
        self.session = self._session(response.json())
        return True

    def _session(self, body: dict[str, Any], sid: str | None = None) -> Session:
        due = time.monotonic() + 0.7 * float(body["expires_in"])
        sid = sid or str(body["session"]["id"])
        return Session(sid, body["access_token"], body["refresh_token"], due)

    async def access(self, session: Session, expired: str | None = None) -> str | None:
        """A usable access token: the tabs' single flight refreshes once per lifetime, or
        at once when an API call refused `expired` (as auth-client.js does on a 401)."""
        if time.monotonic() < session.refresh_at and session.access != expired:
            return session.access
        async with session.lock:
            if session.dead:
                return None
            if time.monotonic() >= session.refresh_at or session.access == expired:
                await self._refresh(session)
        return None if session.dead else session.access

    async def _refresh(self, session: Session) -> None:
        body, lost = {"refresh_token": session.refresh}, None
        while True:
            response = await self._send("refresh", "POST", "/auth/refresh", json=body)
            if response.status_code != 200:
                self._falsely_logged_out(session, f"refresh {response.status_code} {response.text}")
                return
            fresh = response.json()
            if lost is not None:
                self.tally.retry_mismatches += fresh["refresh_token"] != lost
            elif random.random() < LOST_RESPONSES:  # noqa: S311 - load shape
                self.tally.lost_responses += 1
                lost = fresh["refresh_token"]
                continue  # the answer never arrived: send the same token again
            renewed = self._session(fresh, session.sid)
            session.access, session.refresh = renewed.access, renewed.refresh
            session.refresh_at = renewed.refresh_at
            return

    def _falsely_logged_out(self, session: Session, why: str) -> None:
        if not session.dead:
            session.dead = True
            self.tally.false_logouts.append(f"{self.email} {session.sid}: {why[:300]}")

    async def tab(self, session: Session, stop: asyncio.Event, leave_at: float) -> None:
        while not (stop.is_set() or session.dead):
            gap = min(random.expovariate(1 / MEAN_GAP), IDLE_TIMEOUT / 2)  # noqa: S311
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), gap)
            if stop.is_set() or session.dead:
                return
            if time.monotonic() >= leave_at:
                await self.logout(session)
                return
            await self.call_api(session)

    async def call_api(self, session: Session) -> None:
        """One API call. A 401 is not yet a logout: the token may have expired while the
        call waited out 503s or another tab rotated it; the client refreshes and calls
        again, and only a refused refresh (or a refused fresh token) ends the session."""
        expired = None
        for _ in range(2):
            access = await self.access(session, expired)
            if access is None:
                return
            headers = {"Authorization": f"Bearer {access}"}
            me = await self._send("me", "GET", "/auth/me", headers=headers)
            if me.status_code != 401:
                break
            expired = access
        if me.status_code != 200:
            self._falsely_logged_out(session, f"/auth/me {me.status_code} {me.text}")

    async def logout(self, session: Session) -> None:
        async with session.lock:
            if session.dead:
                return
            if time.monotonic() >= session.refresh_at:
                await self._refresh(session)
                if session.dead:
                    return
            session.dead = True  # the other tabs stop: this user logged out
            headers = {"Authorization": f"Bearer {session.access}"}
            out = await self._send("logout", "POST", "/auth/logout", headers=headers)
            if out.status_code == 204:
                self.tally.logged_out.append(session.sid)

    async def live(self, stop: asyncio.Event, arrives_after: float = 0.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), arrives_after)
        while not stop.is_set():
            if not await self.login():
                return
            assert self.session is not None  # noqa: S101
            leave_at = time.monotonic() + random.expovariate(1 / self.mean_life)  # noqa: S311
            tabs = random.randint(2, 5)  # noqa: S311
            await asyncio.gather(*(self.tab(self.session, stop, leave_at) for _ in range(tabs)))
            if stop.is_set() or self.session.sid not in self.tally.logged_out:
                return
            self.session = None
            with contextlib.suppress(TimeoutError):  # away for a while, then back
                await asyncio.wait_for(stop.wait(), random.uniform(5, 20))  # noqa: S311


# ------------------------------------------------------------------------------ topology


@dataclass
class Topology:
    cluster: PgCluster
    redis: PrivateRedis
    gateway: str
    replicas: list[tuple[str, Any]]  # (base URL, process), replaced on restart
    pooled: str
    env: dict[str, str]
    stack: contextlib.ExitStack


def _replica(pooled: str, env: dict[str, str], port: int) -> Any:
    return uvicorn_server(pooled, env=env, serve=True, port=port)


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    with (
        private_postgres() as cluster,
        private_redis() as redis,
        pgbouncer(cluster.url, SERVER_CONNECTIONS) as bouncer,
        contextlib.ExitStack() as stack,
    ):
        pooled = through(cluster.url, bouncer)
        env = {
            "DATABASE_POOLER": "transaction",
            "DATABASE_DIRECT_URL": cluster.url,
            "REDIS_URL": redis.url,
            "ACCESS_TOKEN_TTL": str(ACCESS_TTL),
            "SESSION_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
            "SESSION_CACHE_TTL": "0.5",
            "RATE_LIMITS_ENABLED": "true",
            # One client address carries every user: the per-IP limits would measure that.
            "RATE_LIMIT_LOGIN_IP": "1000000/minute",
            "RATE_LIMIT_REFRESH_IP": "1000000/minute",
            "RATE_LIMIT_VERIFY_IP": "1000000/minute",
        }
        ports = [free_port() for _ in range(REPLICAS)]
        # Each replica migrates the empty database as it starts (one waits on the lock).
        started = stack.enter_context(
            started_together(*(_replica(pooled, env, port) for port in ports))
        )
        gateway = stack.enter_context(
            nginx_in_front([base for base, _ in started], free_port(), limit=16 * REPLICAS)
        )
        yield Topology(cluster, redis, gateway, list(started), pooled, env, stack)


async def _kill_replica(top: Topology, index: int, tally: Tally) -> None:
    base, process = top.replicas[index]
    process.kill()
    await asyncio.to_thread(process.wait)
    await asyncio.sleep(2)
    port = int(base.rsplit(":", 1)[1])
    for attempt in range(1, 4):  # as an orchestrator restarts a replica whose start failed
        try:
            top.replicas[index] = await asyncio.to_thread(
                top.stack.enter_context, _replica(top.pooled, top.env, port)
            )
        except RuntimeError as exc:
            tally.faults.append(f"replica {index + 1} failed to start: {str(exc)[-300:]}")
        else:
            tally.faults.append(f"replica {index + 1} killed and restarted (start {attempt})")
            return


async def _postgres_outage(top: Topology, tally: Tally) -> None:
    await asyncio.to_thread(top.cluster.stop)
    await asyncio.sleep(10)
    await asyncio.to_thread(top.cluster.start)
    tally.faults.append("PostgreSQL down 10 s")


async def _redis_restart(top: Topology, tally: Tally) -> None:
    await asyncio.to_thread(top.redis.kill)
    await asyncio.sleep(1)
    await asyncio.to_thread(top.redis.start)
    tally.faults.append("Redis restarted empty")


def schedule(seconds: float) -> list[tuple[float, str]]:
    """When each fault comes: the hour's, or the same shape scaled to a shorter run."""
    if seconds >= 1800:
        kills = [
            (float(at), f"kill {n % REPLICAS}")
            for n, at in enumerate(range(600, int(seconds), 600))
        ]
        return sorted([*kills, (1500.0, "postgres"), (2100.0, "redis")])
    return [
        (0.2 * seconds, "kill 0"),
        (0.45 * seconds, "postgres"),
        (0.65 * seconds, "redis"),
        (0.8 * seconds, "kill 1"),
    ]


async def _faults(top: Topology, seconds: float, tally: Tally) -> None:
    started = time.monotonic()
    for at, fault in schedule(seconds):
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        if fault.startswith("kill"):
            await _kill_replica(top, int(fault.split()[1]), tally)
        elif fault == "postgres":
            await _postgres_outage(top, tally)
        else:
            await _redis_restart(top, tally)


# ------------------------------------------------------------------------------ the run


async def _invariants(cluster: PgCluster, tally: Tally) -> dict[str, int]:
    conn = await asyncpg.connect(cluster.url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        forks = await conn.fetchval(
            "SELECT count(*) FROM (SELECT parent_id FROM refresh_tokens WHERE parent_id IS NOT NULL"
            " GROUP BY parent_id HAVING count(*) > 1) f"
        )
        reuse = await conn.fetchval(
            "SELECT count(*) FROM audit_events WHERE event = 'refresh.reuse_detected'"
        )
        ids = [uuid.UUID(s) for s in tally.logged_out]
        lost = await conn.fetchval(
            "SELECT count(*) FROM sessions WHERE id = ANY($1::uuid[]) AND revoked_at IS NULL", ids
        )
        other = await conn.fetchval(
            "SELECT count(*) FROM sessions"
            " WHERE revoked_at IS NOT NULL AND revoke_reason <> 'logout'"
        )
        rotations = await conn.fetchval(
            "SELECT count(*) FROM refresh_tokens WHERE parent_id IS NOT NULL"
        )
    finally:
        await conn.close()
    return {
        "false_logouts": len(tally.false_logouts),
        "lost_logouts": int(lost),
        "responses_500": sum(n for key, n in tally.statuses.items() if key.endswith(" 500")),
        "retries_with_another_successor": tally.retry_mismatches,
        "tokens_with_two_successors": int(forks),
        "reuse_detections": int(reuse),
        "sessions_revoked_but_not_by_logout": int(other),
        "rotations": int(rotations),
    }


async def _progress(tally: Tally, started: float, every: float) -> None:
    """A line on stderr now and then: a long run shows how it goes."""
    while True:
        await asyncio.sleep(every)
        answered = sum(tally.statuses.values())
        others = {k: n for k, n in tally.statuses.items() if not k.endswith(" 200")}
        print(
            f"{time.monotonic() - started:6.0f} s: {answered} answers, not 200: {others}, "
            f"false logouts {len(tally.false_logouts)}, faults {len(tally.faults)}, "
            f"driver lag max {tally.driver_lag:.2f} s, "
            f"slowest answer {tally.slowest_answer:.1f} s, "
            f"refusals {dict(tally.refusals)}, transport errors {dict(tally.transport_errors)}",
            file=sys.stderr,
            flush=True,
        )


async def _watch_driver(tally: Tally) -> None:
    """How far the users' own event loop falls behind. A saturated driver delays its users
    (a resent refresh past the reuse interval is theft by design), which would blame the
    service for the harness: beyond DRIVER_LAG_LIMIT the run says so and fails."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(0.5)
        tally.driver_lag = max(tally.driver_lag, time.monotonic() - before - 0.5)


async def _alive_at_end(users: list[User], tally: Tally) -> tuple[int, int]:
    """(sessions alive, sessions that should be): one refresh of each live session."""
    live = [u for u in users if u.session is not None and not u.session.dead]
    for user in live:
        assert user.session is not None  # noqa: S101
        user.session.refresh_at = 0.0
        await user.access(user.session)
    return sum(1 for u in live if u.session is not None and not u.session.dead), len(live)


def _browser(gateway: str) -> httpx.AsyncClient:
    """Each user's own connections, as a browser has (at most 6 per host): one pool shared by
    1,000 users queued a resent refresh behind the others' requests for over 30 s, past the
    reuse interval, where no browser would."""
    limits = httpx.Limits(max_connections=6, max_keepalive_connections=6)
    return httpx.AsyncClient(base_url=gateway, timeout=30, limits=limits)


async def soak(seconds: float, users: int) -> dict[str, Any]:
    tally = Tally()
    with topology() as top:
        emails = [await create_user_in(top.cluster.url, prefix="soak") for _ in range(users)]
        async with contextlib.AsyncExitStack() as browsers:
            stop = asyncio.Event()
            people = [
                User(
                    await browsers.enter_async_context(_browser(top.gateway)),
                    email,
                    tally,
                    mean_life=max(60.0, seconds / 3),
                )
                for email in emails
            ]
            started = time.monotonic()
            ramp = min(60.0, seconds / 5)  # users arrive over the first minute, not at once
            load = asyncio.gather(
                *(person.live(stop, i * ramp / len(people)) for i, person in enumerate(people))
            )
            progress = asyncio.create_task(_progress(tally, started, every=min(60.0, seconds / 10)))
            watch = asyncio.create_task(_watch_driver(tally))
            await _faults(top, seconds, tally)
            await asyncio.sleep(max(0.0, started + seconds - time.monotonic()))
            stop.set()
            await load
            progress.cancel()
            watch.cancel()
            alive, expected = await _alive_at_end(people, tally)
        results: dict[str, Any] = await _invariants(top.cluster, tally)
    results.update(
        alive_at_end=alive,
        live_sessions_at_end=expected,
        logouts=len(tally.logged_out),
        lost_responses_retried=tally.lost_responses,
        network_errors=tally.network_errors,
        faults=tally.faults,
        statuses=dict(sorted(tally.statuses.items())),
        refusals=dict(sorted(tally.refusals.items())),
        transport_errors=dict(sorted(tally.transport_errors.items())),
        slowest_answer_s=round(tally.slowest_answer, 2),
        first_false_logouts=tally.false_logouts[:5],
        driver_saturated=tally.driver_lag > DRIVER_LAG_LIMIT,
        driver_lag_max_s=round(tally.driver_lag, 3),
    )
    return results


async def _until_signalled(run: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """INT or TERM (Ctrl-C, a CI timeout, kill) cancels the run, which stops the private
    servers on its way out."""
    task = asyncio.ensure_future(run)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    return await task


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=60)
    args = parser.parse_args()
    started = time.monotonic()
    results = asyncio.run(_until_signalled(soak(args.minutes * 60, args.users)))
    print(f"{args.users} users, {args.minutes:g} min (took {time.monotonic() - started:.0f} s)")
    for name, value in results.items():
        print(f"{name}: {value}")
    broken = [name for name in INVARIANTS if results[name]]
    if results["alive_at_end"] != results["live_sessions_at_end"]:
        broken.append("alive_at_end")
    print("FAILED: " + ", ".join(broken) if broken else "all invariants hold")
    return 1 if broken else 0


INVARIANTS = (
    "driver_saturated",  # the harness's own validity, first
    "false_logouts",
    "lost_logouts",
    "responses_500",
    "retries_with_another_successor",
    "tokens_with_two_successors",
    "reuse_detections",
    "sessions_revoked_but_not_by_logout",
)


if __name__ == "__main__":
    sys.exit(main())
