"""Throughput with 1, 2 and 3 replicas (issue 20): `python -m app serve` processes behind the
shipped nginx recipe (round robin over one `server` line each), PostgreSQL through PgBouncer in
transaction pooling (DATABASE_POOLER=transaction, LISTEN on the direct URL). Each replica count
gets refresh (8 rotation chains, as `python -m bench`) and /auth/verify (one token, 16
connections) through the gateway, and, as a reference in the same run, the same two against one
replica of the same size without nginx and PgBouncer.

On one machine every replica shares its cores with the others, nginx, PgBouncer, PostgreSQL and
wrk: the point is that the service works through all of it and that there is no cliff, not
linear scaling. Usage: python -m bench.replicas [--duration 10] [--workers 1] [--counts 1 2 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

from bench.__main__ import (
    Result,
    _new_database,
    drop_database,
    login,
    refresh_run,
    service_env,
    start_service,
    stop,
    wrk,
)
from bench.gateway import nginx_binary, nginx_in_front
from bench.pgbouncer import pgbouncer, through
from bench.processes import free_port

SERVER_CONNECTIONS = 20  # PgBouncer's per database and user, as docs/scaling.md suggests


@contextlib.contextmanager
def replicas(count: int, workers: int, env: dict[str, str]) -> Iterator[list[str]]:
    processes: list[subprocess.Popen[bytes]] = []
    try:
        bases = []
        for _ in range(count):
            port = free_port()
            processes.append(start_service(port, workers, env))
            bases.append(f"http://127.0.0.1:{port}")
        yield bases
    finally:
        for process in processes:
            stop(process)


def measure(name: str, base: str, duration: int) -> tuple[Result, Result]:
    auth = {"Authorization": f"Bearer {login(base)['access_token']}"}
    refresh = refresh_run(f"refresh {name}", base, duration)
    verify = wrk(
        f"verify {name}",
        f"{base}/auth/verify",
        duration=duration,
        threads=2,
        connections=16,  # the recipe lets 16 in flight per replica (limit_conn)
        headers=auth,
    )
    return refresh, verify


def run(args: argparse.Namespace, databases: list[str]) -> list[tuple[Result, Result]]:
    raw_dsn, database_url = _new_database(args, databases)
    rows = []
    with replicas(1, args.workers, service_env(database_url)) as [alone]:
        rows.append(measure("1 replica, direct", alone, args.duration))
    with pgbouncer(raw_dsn, SERVER_CONNECTIONS) as port:
        env = {
            **service_env(through(database_url, port)),
            "DATABASE_POOLER": "transaction",
            "DATABASE_DIRECT_URL": database_url,
        }
        for count in args.counts:
            with (
                replicas(count, args.workers, env) as bases,
                nginx_in_front(bases, free_port(), limit=16 * count) as gateway,
            ):
                rows.append(measure(f"{count} via nginx + PgBouncer", gateway, args.duration))
    return rows


def report(rows: list[tuple[Result, Result]], args: argparse.Namespace) -> None:
    print(f"\n{args.workers} worker(s) per replica, {os.cpu_count()} CPUs, {args.duration} s runs")
    print(f"{'':34} {'refresh/s':>10} {'p99 ms':>8} {'verify/s':>10} {'p99 ms':>8} {'errors':>7}")
    for refresh, verify in rows:
        name = refresh.name.removeprefix("refresh ")
        print(
            f"{name:34} {refresh.rps:10.0f} {refresh.p99_ms:8.1f} {verify.rps:10.0f} "
            f"{verify.p99_ms:8.1f} {refresh.errors + verify.errors:7d}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers per replica")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--admin-dsn",
        default=os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    if not shutil.which("wrk") or nginx_binary() is None:
        print(
            "needs wrk, nginx and pgbouncer: apt-get install -y wrk nginx pgbouncer",
            file=sys.stderr,
        )
        return 2
    databases: list[str] = []
    try:
        rows = run(args, databases)
    finally:
        for name in databases:
            asyncio.run(drop_database(args.admin_dsn, name))
    report(rows, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
