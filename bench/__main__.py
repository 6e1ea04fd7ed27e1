"""`python -m bench`: throughput and latency of this service next to the framework ceiling.

Starts, on a fresh PostgreSQL database, the bare FastAPI reference app (B0 constant JSON, B1 one
asyncpg SELECT) and this service, each with the same number of uvicorn workers, drives them with
wrk, and prints one table with ratios. Absolute numbers drift on a shared machine; ratios taken in
the same run do not drift much.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

from app import migrate
from app.core.clock import Clock
from app.core.db import create_engine
from app.core.security import PasswordHasher
from app.users import service as users

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "lua"
EMAIL, PASSWORD = "bench@example.com", "correct horse battery staple"
SECRET = "bench-secret-key-0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(
    name: str,
    url: str,
    *,
    duration: int,
    threads: int,
    connections: int,
    script: Path | None = None,
    headers: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
) -> Result:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency"]
    for key, value in (headers or {}).items():
        cmd += ["-H", f"{key}: {value}"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run(
        cmd + [url], capture_output=True, text=True, check=True, env={**os.environ, **(env or {})}
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors:.*", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(0)))
    return Result(name, rps, p50, p99, errors)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(
    target: str, port: int, workers: int, env: dict[str, str], factory: bool
) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    if factory:
        cmd.append("--factory")
    process = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if (
                httpx.get(
                    f"http://127.0.0.1:{port}/b0"
                    if not factory
                    else f"http://127.0.0.1:{port}/healthz",
                    timeout=1,
                ).status_code
                == 200
            ):
                time.sleep(1.0)  # let every worker finish starting
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{target} did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


async def create_database(admin_url: str) -> str:
    conn = await asyncpg.connect(admin_url)
    name = f"authsvc_bench_{uuid.uuid4().hex[:8]}"
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return name


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def seed_user(database_url: str) -> None:
    engine = create_engine(database_url)
    async with engine.begin() as conn:
        await users.create_user(
            conn, PasswordHasher(), email=EMAIL, password=PASSWORD, role="user", now=Clock().now()
        )
    await engine.dispose()


def login(base: str) -> dict[str, str]:
    response = httpx.post(
        f"{base}/auth/login", json={"email": EMAIL, "password": PASSWORD}, timeout=30
    )
    response.raise_for_status()
    body: dict[str, str] = response.json()
    return body


def argon2_verify_rate(seconds: float = 5.0, threads: int = 2) -> float:
    """Raw argon2id verifications per second on `threads` cores: the login ceiling."""
    hasher = PasswordHasher()
    stored = asyncio.run(hasher.hash(PASSWORD))
    verify = hasher._hash.verify  # the library call alone, no service code around it
    deadline = time.perf_counter() + seconds

    def loop() -> int:
        count = 0
        while time.perf_counter() < deadline:
            verify(PASSWORD, stored)
            count += 1
        return count

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(lambda _: loop(), range(threads)))
    return total / (time.perf_counter() - started)


async def count_token_rows(database_url: str) -> int:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM refresh_tokens"))
    finally:
        await conn.close()


async def refresh_chains(base: str, refreshes: int, sessions: int) -> list[str]:
    """`refreshes` rotations spread over `sessions` fresh sessions; returns their access tokens."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        logins = []
        for _ in range(sessions):
            r = await client.post("/auth/login", json={"email": EMAIL, "password": PASSWORD})
            logins.append(r.json())

        async def chain(token: str, n: int) -> str:
            access = ""
            for _ in range(n):
                r = await client.post("/auth/refresh", json={"refresh_token": token})
                r.raise_for_status()
                token, access = r.json()["refresh_token"], r.json()["access_token"]
            return access

        return list(
            await asyncio.gather(
                *(chain(t["refresh_token"], refreshes // sessions) for t in logins)
            )
        )


async def logout_all(base: str, access_tokens: list[str]) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for access in access_tokens:
            r = await client.post("/auth/logout", headers={"Authorization": f"Bearer {access}"})
            r.raise_for_status()


def token_table(base: str, database_url: str, refreshes: int, sessions: int) -> dict[str, int]:
    """How the refresh-token table grows under rotation and shrinks with prune."""
    rows = {"before": asyncio.run(count_token_rows(database_url))}
    access = asyncio.run(refresh_chains(base, refreshes, sessions))
    rows[f"after {refreshes} refreshes ({sessions} sessions)"] = asyncio.run(
        count_token_rows(database_url)
    )
    rows["after prune, default retention (session life)"] = prune_rows(database_url, None)
    time.sleep(31)
    rows["after prune, REFRESH_TOKEN_RETENTION=30"] = prune_rows(database_url, 30)
    asyncio.run(logout_all(base, access))
    rows["after those sessions log out, then prune"] = prune_rows(database_url, None)
    return rows


def prune_rows(database_url: str, retention: int | None) -> int:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SECRET_KEY": SECRET,
        "REFRESH_TOKEN_RETENTION": "" if retention is None else str(retention),
        "REFRESH_REUSE_INTERVAL": "30" if retention is None else str(min(retention, 30)),
        "LOG_LEVEL": "WARNING",
    }
    subprocess.run(
        [sys.executable, "-m", "app", "prune"], cwd=ROOT, env=env, check=True, capture_output=True
    )
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")

    async def count() -> int:
        conn = await asyncpg.connect(dsn)
        value = await conn.fetchval("SELECT count(*) FROM refresh_tokens")
        await conn.close()
        return int(value)

    return asyncio.run(count())


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--admin-dsn",
        default=os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    parser.add_argument(
        "--table-refreshes",
        type=int,
        default=10_000,
        help="refreshes for the token-table growth check (0 skips it)",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2

    name = asyncio.run(create_database(args.admin_dsn))
    base_dsn = args.admin_dsn.rpartition("/")[0]
    raw_dsn = f"{base_dsn}/{name}"
    database_url = raw_dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    results: list[Result] = []
    extra: dict[str, float | int] = {}
    table: dict[str, int] = {}
    processes: list[subprocess.Popen[bytes]] = []
    d, c, t = args.duration, args.connections, 2
    try:
        migrate.upgrade(database_url)
        asyncio.run(seed_user(database_url))
        ceiling_port, service_port = _free_port(), _free_port()
        processes.append(
            start(
                "bench.ceiling:app",
                ceiling_port,
                args.workers,
                {"BENCH_DSN": raw_dsn},
                factory=False,
            )
        )
        service_env = {
            "DATABASE_URL": database_url,
            "SECRET_KEY": SECRET,
            "ENVIRONMENT": "production",
            "JWT_ISSUER": "https://auth.bench",
            "ACCESS_TOKEN_TTL": "3600",
            "PRUNE_INTERVAL": "0",
            "LOG_LEVEL": "INFO",
            # One client IP drives all the load: measure the service, not the limiter.
            "RATE_LIMITS_ENABLED": "false",
        }
        processes.append(
            start("app.main:create_app", service_port, args.workers, service_env, factory=True)
        )
        ceiling = f"http://127.0.0.1:{ceiling_port}"
        service = f"http://127.0.0.1:{service_port}"

        results.append(
            wrk("B0 constant JSON", f"{ceiling}/b0", duration=d, threads=t, connections=c)
        )
        results.append(
            wrk("B1 one asyncpg SELECT", f"{ceiling}/b1", duration=d, threads=t, connections=c)
        )
        access = login(service)["access_token"]
        auth = {"Authorization": f"Bearer {access}"}
        results.append(
            wrk(
                "/auth/session-status",
                f"{service}/auth/session-status",
                duration=d,
                threads=t,
                connections=c,
                headers=auth,
            )
        )
        results.append(
            wrk(
                "/auth/verify (forward-auth)",
                f"{service}/auth/verify",
                duration=d,
                threads=t,
                connections=c,
                headers=auth,
            )
        )
        results.append(
            wrk(
                "/auth/me (slides)",
                f"{service}/auth/me",
                duration=d,
                threads=t,
                connections=c,
                headers=auth,
            )
        )
        with tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False) as fh:
            for _ in range(8):
                fh.write(login(service)["refresh_token"] + "\n")
        results.append(
            wrk(
                "/auth/refresh (8 chains)",
                service,
                duration=d,
                threads=8,
                connections=8,
                script=LUA / "refresh_chain.lua",
                env={"TOKENS_FILE": fh.name},
            )
        )
        os.unlink(fh.name)
        results.append(
            wrk(
                "/auth/login",
                f"{service}/auth/login",
                duration=d,
                threads=2,
                connections=4,
                script=LUA / "login.lua",
                env={"LOGIN_BODY": json.dumps({"email": EMAIL, "password": PASSWORD})},
            )
        )
        stop(processes.pop())
        stop(processes.pop())
        extra["argon2_verify_per_s_2_cores"] = argon2_verify_rate()
        if args.table_refreshes:
            processes.append(
                start("app.main:create_app", service_port, args.workers, service_env, factory=True)
            )
            table = token_table(service, database_url, args.table_refreshes, 50)
            stop(processes.pop())
    finally:
        for process in processes:
            stop(process)
        asyncio.run(drop_database(args.admin_dsn, name))

    report(results, extra, args)
    if table:
        print("\nrefresh_tokens rows:")
        for label, count in table.items():
            print(f"  {label:<48} {count:>8}")
    return 0


def report(results: list[Result], extra: dict[str, float | int], args: argparse.Namespace) -> None:
    by_name = {r.name: r for r in results}
    b0, b1 = by_name["B0 constant JSON"], by_name["B1 one asyncpg SELECT"]
    print(
        f"\nPostgreSQL, {args.workers} uvicorn workers, wrk {args.duration}s, "
        f"{args.connections} connections (refresh: 8, login: 4)\n"
    )
    columns = ("req/s", 9), ("p50 ms", 7), ("p99 ms", 7), ("errors", 6), ("/ B1", 5)
    print(f"| {'endpoint':<28} | " + " | ".join(f"{n:>{w}}" for n, w in columns) + " |")
    print(f"|{'-' * 30}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 8}|{'-' * 7}|")
    for r in results:
        print(
            f"| {r.name:<28} | {r.rps:>9.0f} | {r.p50_ms:>7.2f} | {r.p99_ms:>7.2f} | "
            f"{r.errors:>6} | {r.rps / b1.rps:>5.2f} |"
        )
    argon = extra.get("argon2_verify_per_s_2_cores")
    if argon:
        login_rate = by_name["/auth/login"].rps
        print(f"\nargon2id verify, 2 cores: {argon:.1f}/s")
        print(f"login / argon2 ceiling = {login_rate / argon:.2f}")
    print(f"B1 / B0 = {b1.rps / b0.rps:.2f}")


if __name__ == "__main__":
    sys.exit(main())
