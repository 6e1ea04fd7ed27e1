"""Issue 20: three `serve` replicas behind the nginx recipe (its upstream with three `server`
lines, round robin), PostgreSQL through PgBouncer in transaction pooling, Redis for the shared
counters. A refresh race spread over all three has one successor; a retry that lands on another
replica gets the same successor; a replica killed and restarted under load logs nobody out,
loses no rotation and answers no 500; rate limits and the account lockout hold across replicas."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import text

from app.core import migrate
from app.core.db import create_engine
from bench.gateway import nginx_binary, nginx_in_front
from tests.conftest import PASSWORD, TEST_REDIS_URL, _create_pg_database, _drop_pg_database
from tests.core.test_rolling_deploy import _execute
from tests.support.cli import cli
from tests.support.pgbouncer import pgbouncer, through
from tests.support.servers import (
    create_user_in,
    free_port,
    started_together,
    stop_process,
    uvicorn_server,
)

pytestmark = pytest.mark.slow
REPLICAS = 3
LOGINS_PER_ACCOUNT = 6  # per minute, counted across the replicas through Redis


@dataclass
class Cluster:
    gateway: str
    replicas: list[str]
    database: str  # PostgreSQL itself, for the test's own checks
    pooled: str  # the replicas' DATABASE_URL (PgBouncer)
    env: dict[str, str]
    processes: list[Any] = field(default_factory=list)


@contextlib.contextmanager
def _replica(pooled: str, env: dict[str, str], port: int) -> Iterator[tuple[str, Any]]:
    with uvicorn_server(pooled, env=env, serve=True, port=port) as started:
        yield started


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    if nginx_binary() is None:
        pytest.fail("nginx is not installed (apt-get install -y nginx)")
    database = await _create_pg_database()
    if database is None:
        pytest.fail("PostgreSQL unreachable")
    try:
        await asyncio.to_thread(migrate.upgrade, database)
        env = {
            "DATABASE_POOLER": "transaction",
            "DATABASE_DIRECT_URL": database,
            "REDIS_URL": TEST_REDIS_URL,
            "RATE_LIMIT_NAMESPACE": f"replicas-{uuid.uuid4().hex[:8]}",
            "RATE_LIMITS_ENABLED": "true",
            "RATE_LIMIT_LOGIN_ACCOUNT": f"{LOGINS_PER_ACCOUNT}/minute",
            "RATE_LIMIT_LOGIN_IP": "1000/minute",
            "RATE_LIMIT_REFRESH_SESSION": "10000/minute",
            "RATE_LIMIT_REFRESH_IP": "100000/minute",
            "RATE_LIMIT_VERIFY_IP": "100000/minute",
            "SESSION_CACHE_TTL": "0.5",  # the default: revocations are pushed to the caches
            "TRUSTED_PROXIES": '["127.0.0.1/32"]',
            # A rotated key is known to every replica (reloaded each second) before it signs.
            "KEY_RELOAD_INTERVAL": "1",
            "KEY_PUBLISH_DELAY": "2",
        }
        ports = [free_port() for _ in range(REPLICAS)]
        with pgbouncer(database, server_connections=6) as bouncer_port:
            pooled = through(database, bouncer_port)
            with started_together(*(_replica(pooled, env, port) for port in ports)) as started:
                replicas = [base for base, _ in started]
                # The recipe's in-flight limit (16) is one replica's; three take three times it.
                with nginx_in_front(replicas, free_port(), limit=16 * REPLICAS) as gateway:
                    yield Cluster(gateway, replicas, database, pooled, env, [p for _, p in started])
    finally:
        await _drop_pg_database(database)


async def _login(client: httpx.AsyncClient, base: str, email: str) -> dict[str, Any]:
    response = await client.post(f"{base}/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _one_query(database: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(database)
    try:
        async with engine.connect() as conn:
            return list((await conn.execute(text(sql), params)).all())
    finally:
        await engine.dispose()


async def _tokens_with_two_successors(database: str) -> list[Any]:
    return await _one_query(
        database,
        "SELECT parent_id, count(*) FROM refresh_tokens WHERE parent_id IS NOT NULL "
        "GROUP BY parent_id HAVING count(*) > 1",
    )


@pytest.mark.parametrize("kind", ["postgres"])
async def test_a_refresh_race_over_three_replicas_has_one_successor(
    cluster: Cluster, kind: str
) -> None:
    email = await create_user_in(cluster.database, prefix="replicas")
    async with httpx.AsyncClient(timeout=30) as client:
        tokens = await _login(client, cluster.gateway, email)
        race = await asyncio.gather(
            *(
                client.post(
                    f"{cluster.gateway}/auth/refresh",
                    json={"refresh_token": tokens["refresh_token"]},
                )
                for _ in range(30)
            )
        )
        assert [r.status_code for r in race] == [200] * 30, [
            r.text for r in race if r.status_code != 200
        ]
        successors = {r.json()["refresh_token"] for r in race}
        assert len(successors) == 1
        # A client whose response was lost retries on whichever replica it reaches: each
        # answers the same successor (inside REFRESH_REUSE_INTERVAL), none sees theft.
        retries = [
            await client.post(
                f"{base}/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
            )
            for base in cluster.replicas
        ]
        assert [r.status_code for r in retries] == [200] * REPLICAS, [r.text for r in retries]
        assert {r.json()["refresh_token"] for r in retries} == successors
        # And the successor rotates on any of them.
        onward = await client.post(
            f"{cluster.replicas[2]}/auth/refresh", json={"refresh_token": successors.pop()}
        )
        assert onward.status_code == 200, onward.text
    rows = await _one_query(
        cluster.database,
        "SELECT count(*) FROM refresh_tokens WHERE session_id = :sid",
        sid=uuid.UUID(tokens["session"]["id"]),
    )
    assert rows == [(3,)]  # the login's token, its one successor, and the next
    assert await _tokens_with_two_successors(cluster.database) == []


@pytest.mark.parametrize("kind", ["postgres"])
async def test_rate_limits_and_lockout_hold_across_replicas(cluster: Cluster, kind: str) -> None:
    """Round robin spreads one account's logins over the three replicas, so no replica alone
    sees more than a third of them: the limit and the lockout bite only because they are
    shared (Redis, PostgreSQL)."""
    limited = await create_user_in(cluster.database, prefix="limited")
    async with httpx.AsyncClient(timeout=30) as client:
        statuses = []
        for _ in range(LOGINS_PER_ACCOUNT + 1):
            response = await client.post(
                f"{cluster.gateway}/auth/login", json={"email": limited, "password": PASSWORD}
            )
            statuses.append(response.status_code)
        assert statuses == [200] * LOGINS_PER_ACCOUNT + [429], statuses

        locked = await create_user_in(cluster.database, prefix="locked")
        wrong = [
            await client.post(
                f"{cluster.gateway}/auth/login", json={"email": locked, "password": "wrong" * 3}
            )
            for _ in range(5)
        ]
        assert [r.status_code for r in wrong] == [401] * 5
        right = await client.post(
            f"{cluster.gateway}/auth/login", json={"email": locked, "password": PASSWORD}
        )
        assert right.status_code == 401, right.text  # locked: the same answer as a wrong one
    failures = await _one_query(
        cluster.database, "SELECT failed_logins FROM users WHERE email = :email", email=locked
    )
    assert failures == [(5,)]


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    false_logouts: list[str] = field(default_factory=list)
    rotations: int = 0
    lost_and_retried: int = 0
    retry_mismatches: int = 0

    def failures(self) -> dict[int, int]:
        """Answers a client could not take as "try again": anything but 200, and 503 (the
        service shedding load on a busy machine, with Retry-After)."""
        return {code: n for code, n in self.statuses.items() if code not in (200, 503)}


async def _send(tally: Tally, request: Awaitable[httpx.Response]) -> httpx.Response | None:
    """One request, counted; None when it must be sent again (503 with Retry-After, a
    gateway error, a transport error), after a short pause."""
    try:
        response = await request
    except httpx.TransportError as exc:
        tally.errors[type(exc).__name__] += 1
    else:
        tally.statuses[response.status_code] += 1
        if response.status_code == 503:
            assert response.headers.get("retry-after"), response.text
        elif response.status_code not in (502, 504):
            return response
    await asyncio.sleep(0.1)
    return None


async def _user(
    client: httpx.AsyncClient, gateway: str, email: str, stop: asyncio.Event, tally: Tally
) -> str:
    """One user: refresh, call the API, now and then lose a refresh response and send the
    same token again (a retry, to whichever replica round robin gives), and retry when asked
    to. Returns the refresh token held at the end."""
    current: str = (await _login(client, gateway, email))["refresh_token"]
    lost: str | None = None  # the successor of a response "lost" on the way back
    while not stop.is_set() or lost is not None:
        refresh = client.post(f"{gateway}/auth/refresh", json={"refresh_token": current})
        response = await _send(tally, refresh)
        if response is None:
            continue
        if response.status_code != 200:
            tally.false_logouts.append(f"{email}: {response.status_code} {response.text}")
            return current
        successor: str = response.json()["refresh_token"]
        if lost is not None:
            tally.retry_mismatches += successor != lost
            lost = None
        elif random.random() < 0.2:  # noqa: S311 - a test's dice
            lost = successor
            tally.lost_and_retried += 1
            continue
        tally.rotations += 1
        current = successor
        bearer = {"Authorization": f"Bearer {response.json()['access_token']}"}
        me = await _send(tally, client.get(f"{gateway}/auth/me", headers=bearer))
        if me is not None and me.status_code != 200:
            tally.false_logouts.append(f"{email}: /auth/me {me.status_code} {me.text}")
            return current
        await asyncio.sleep(0.02)
    return current


@pytest.mark.parametrize("kind", ["postgres"])
async def test_a_replica_killed_and_restarted_under_load_logs_nobody_out(
    cluster: Cluster, kind: str
) -> None:
    users = [await create_user_in(cluster.database, prefix="load") for _ in range(12)]
    tally = Tally()
    victim = cluster.processes[1]
    port = int(cluster.replicas[1].rsplit(":", 1)[1])
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=30) as client:
        load = asyncio.gather(
            *(_user(client, cluster.gateway, email, stop, tally) for email in users)
        )
        await asyncio.sleep(3)
        victim.kill()  # SIGKILL: requests in flight on it are cut off
        await asyncio.to_thread(victim.wait)
        rotations_at_kill = tally.rotations
        await asyncio.sleep(2)
        with _replica(cluster.pooled, cluster.env, port):  # back on the same address
            restarted_at = tally.rotations
            await asyncio.sleep(4)  # the load goes on over all three again
            stop.set()
            finals = await load
            # Everyone's session is alive and rotates on every replica, the restarted one too.
            for final in finals:
                for base in cluster.replicas:
                    onward = await client.post(
                        f"{base}/auth/refresh", json={"refresh_token": final}
                    )
                    assert onward.status_code == 200, onward.text
                    final = onward.json()["refresh_token"]
    print(
        f"\n3 replicas, 12 users, replica 2 killed at 3 s and restarted from 5 s, 4 s more: "
        f"{tally.rotations} rotations ({rotations_at_kill} before the kill, {restarted_at} when "
        f"the restart answered), {tally.lost_and_retried} lost responses retried, "
        f"statuses {dict(tally.statuses)}, transport errors {dict(tally.errors)}"
    )
    assert tally.false_logouts == []
    # Not even a 502: the recipe sends a refresh cut off by the kill on to the next replica
    # (without its `non_idempotent`, 1-2 per run reached the client).
    assert tally.failures() == {}, tally.statuses
    assert tally.retry_mismatches == 0
    assert tally.rotations > rotations_at_kill > 0
    assert tally.rotations > restarted_at  # the load went on after the restart
    revoked = await _one_query(
        cluster.database, "SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL"
    )
    assert revoked == [(0,)]
    assert await _tokens_with_two_successors(cluster.database) == []


async def _verifying_user(
    client: httpx.AsyncClient, gateway: str, email: str, stop: asyncio.Event, tally: Tally
) -> set[str]:
    """Refresh, then have the gateway check the token (/auth/verify), until `stop`. Returns
    the kids of the tokens it was given."""
    current = (await _login(client, gateway, email))["refresh_token"]
    kids: set[str] = set()
    while not stop.is_set():
        refresh = client.post(f"{gateway}/auth/refresh", json={"refresh_token": current})
        response = await _send(tally, refresh)
        if response is None:
            continue
        if response.status_code != 200:
            tally.false_logouts.append(f"refresh {response.status_code} {response.text}")
            return kids
        current = response.json()["refresh_token"]
        access = response.json()["access_token"]
        kids.add(jwt.get_unverified_header(access)["kid"])
        bearer = {"Authorization": f"Bearer {access}"}
        verified = await _send(tally, client.get(f"{gateway}/auth/verify", headers=bearer))
        if verified is not None and verified.status_code != 200:
            tally.false_logouts.append(f"verify {verified.status_code} {verified.text}")
        await asyncio.sleep(0.05)
    return kids


@pytest.mark.parametrize("kind", ["postgres"])
async def test_a_rolling_restart_onto_a_new_migration_and_key_fails_no_request(
    cluster: Cluster, kind: str
) -> None:
    """The new release's migration lands (an expand step), a new signing key is rotated in,
    and the replicas are restarted one by one (SIGTERM: uvicorn drains, then a new process on
    the same address), while users refresh and the gateway verifies their tokens: every
    request answers 200, and tokens of the new key verify on replicas not yet restarted."""
    users = [await create_user_in(cluster.database, prefix="rolling") for _ in range(8)]
    tally, stop = Tally(), asyncio.Event()
    async with httpx.AsyncClient(timeout=30) as client, contextlib.AsyncExitStack() as stack:
        load = asyncio.gather(
            *(_verifying_user(client, cluster.gateway, email, stop, tally) for email in users)
        )
        await asyncio.sleep(1)
        # The new release's migrate step: an expand migration this release does not know.
        await _execute(
            cluster.database,
            "ALTER TABLE sessions ADD COLUMN newer_release_note VARCHAR(40)",
            "UPDATE alembic_version SET version_num = '0099'",
        )
        old = await client.get(f"{cluster.replicas[2]}/readyz")
        assert old.status_code == 200, old.text  # still in the balancer
        assert old.json()["migrations"] == "newer"
        rotated = await cli(cluster.database, "keys", "rotate", env=cluster.env)
        assert rotated.returncode == 0, rotated.stderr
        for index, process in enumerate(cluster.processes):
            await asyncio.to_thread(stop_process, process)
            port = int(cluster.replicas[index].rsplit(":", 1)[1])
            replica = _replica(cluster.pooled, cluster.env, port)
            await asyncio.to_thread(stack.enter_context, replica)
            await asyncio.sleep(1)
        stop.set()
        kids = set().union(*await load)
    print(
        f"\nrolling restart of 3 replicas: statuses {dict(tally.statuses)}, "
        f"transport errors {dict(tally.errors)}, kids {len(kids)}"
    )
    assert tally.false_logouts == []
    assert tally.failures() == {}, tally.statuses
    assert tally.errors == {}
    assert len(kids) == 2, kids  # tokens of the old key and of the rotated one
