"""`python -m bench.soak`: many clients log in, refresh, verify and log out for a few minutes
while the PostgreSQL server is restarted once; then the invariants are checked.

Runs against a private PostgreSQL cluster it creates (never the machine's shared server) and
this service with 2 workers. Honest clients retry a refresh with the same token after a 503 or a
network error, as auth-client.js does. Invariants checked at the end:
  * no response was a 500 (503 during the restart is expected);
  * no refresh token has two successors;
  * no reuse was detected (every client is honest);
  * every logout that answered 204 left its session revoked.
Exit status 0 when all hold.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sys
import time
import uuid
from dataclasses import dataclass, field

import asyncpg
import httpx

from app.core import migrate
from tests.support.pgcluster import private_postgres
from tests.support.servers import create_user_in, uvicorn_server

PASSWORD = "correct horse battery staple"


@dataclass
class Tally:
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    logged_out: list[str] = field(default_factory=list)
    network_errors: int = 0


async def _post(
    client: httpx.AsyncClient, tally: Tally, url: str, **kw: object
) -> httpx.Response | None:
    try:
        response = await client.post(url, **kw)  # type: ignore[arg-type]
    except httpx.HTTPError:
        tally.network_errors += 1
        return None
    tally.statuses[response.status_code] += 1
    if response.status_code >= 500 and response.status_code != 503:
        tally.failures.append(f"{url} {response.status_code} {response.text[:200]}")
    return response


async def _client(base: str, email: str, deadline: float, tally: Tally) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        while time.monotonic() < deadline:
            login = await _post(
                client, tally, "/auth/login", json={"email": email, "password": PASSWORD}
            )
            if login is None or login.status_code != 200:
                await asyncio.sleep(0.2)
                continue
            tokens = login.json()
            for _ in range(random.randint(3, 12)):  # noqa: S311 - load shape, not security
                if time.monotonic() >= deadline:
                    break
                headers = {"Authorization": f"Bearer {tokens['access_token']}"}
                try:
                    verify = await client.get("/auth/verify", headers=headers)
                    tally.statuses[verify.status_code] += 1
                    if verify.status_code >= 500 and verify.status_code != 503:
                        tally.failures.append(
                            f"/auth/verify {verify.status_code} {verify.text[:200]}"
                        )
                except httpx.HTTPError:
                    tally.network_errors += 1
                refreshed = None
                for _attempt in range(20):  # retry the same token through an outage
                    refreshed = await _post(
                        client,
                        tally,
                        "/auth/refresh",
                        json={"refresh_token": tokens["refresh_token"]},
                    )
                    if refreshed is not None and refreshed.status_code != 503:
                        break
                    await asyncio.sleep(0.25)
                if refreshed is None or refreshed.status_code != 200:
                    break
                tokens = refreshed.json()
                await asyncio.sleep(random.uniform(0, 0.05))  # noqa: S311
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            out = await _post(client, tally, "/auth/logout", headers=headers)
            if out is not None and out.status_code == 204:
                tally.logged_out.append(tokens["session"]["id"])


async def _invariants(dsn: str, tally: Tally) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
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
        sessions = await conn.fetchval("SELECT count(*) FROM sessions")
    finally:
        await conn.close()
    return {
        "responses_500": sum(n for s, n in tally.statuses.items() if s >= 500 and s != 503),
        "tokens_with_two_successors": int(forks),
        "false_reuse_detections": int(reuse),
        "lost_logouts": int(lost),
        "sessions": int(sessions),
    }


async def soak(seconds: float, clients: int) -> int:
    with private_postgres() as cluster:
        await asyncio.to_thread(migrate.upgrade, cluster.url)
        email = await create_user_in(cluster.url, prefix="soak")
        env = {"RATE_LIMITS_ENABLED": "false", "DB_POOL_TIMEOUT": "2"}
        with uvicorn_server(cluster.url, workers=2, env=env) as (base, _):
            tally = Tally()
            deadline = time.monotonic() + seconds
            load = asyncio.gather(*(_client(base, email, deadline, tally) for _ in range(clients)))
            await asyncio.sleep(seconds / 2)
            started = time.monotonic()
            await asyncio.to_thread(cluster.stop)
            await asyncio.sleep(2)
            await asyncio.to_thread(cluster.start)
            print(f"PostgreSQL restarted ({time.monotonic() - started:.1f} s down)")
            await load
        dsn = cluster.url.replace("postgresql+asyncpg://", "postgresql://")
        results = await _invariants(dsn, tally)
    print(
        "responses:", dict(sorted(tally.statuses.items())), "network errors:", tally.network_errors
    )
    for failure in tally.failures[:5]:
        print("  ", failure)
    for name, value in results.items():
        print(f"{name}: {value}")
    failed = any(
        results[k]
        for k in (
            "responses_500",
            "tokens_with_two_successors",
            "false_reuse_detections",
            "lost_logouts",
        )
    )
    print("FAILED" if failed else "all invariants hold")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=40)
    args = parser.parse_args()
    return asyncio.run(soak(args.seconds, args.clients))


if __name__ == "__main__":
    sys.exit(main())
