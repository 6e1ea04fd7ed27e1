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
import statistics
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

from app.core import migrate
from app.core.clock import Clock
from app.core.db import create_engine
from app.core.security import PasswordHasher
from app.users import service as users
from bench import checks

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "lua"
EMAIL, PASSWORD = "bench@example.com", "correct horse battery staple"
LOGIN_BODY = {"email": EMAIL, "password": PASSWORD}
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


def start_ceiling(target: str, port: int, workers: int, dsn: str) -> subprocess.Popen[bytes]:
    """A reference app of bench.ceiling under plain uvicorn."""
    cmd = [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    # B2 hashes refresh tokens as the service does: with the service's secret.
    return _launch(cmd, {"BENCH_DSN": dsn, "BENCH_SECRET": SECRET}, f"http://127.0.0.1:{port}/b0")


def start_service(port: int, workers: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The service as in production: `python -m app serve` (multiprocess metrics, hashing
    threads sized per worker), which runs uvicorn with these workers."""
    cmd = [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers)]
    return _launch(cmd, env, f"http://127.0.0.1:{port}/healthz")


def _launch(cmd: list[str], env: dict[str, str], ready_url: str) -> subprocess.Popen[bytes]:
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
            if httpx.get(ready_url, timeout=1).status_code == 200:
                time.sleep(1.0)  # let every worker finish starting
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{' '.join(cmd)} did not start")


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
    password_hash = await PasswordHasher().hash(PASSWORD)
    async with engine.begin() as conn:
        await users.insert_new_user(
            conn, email=EMAIL, password_hash=password_hash, role="user", now=Clock().now()
        )
    await engine.dispose()


def login(base: str) -> dict[str, str]:
    response = httpx.post(f"{base}/auth/login", json=LOGIN_BODY, timeout=30)
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


async def refresh_chains(base: str, refreshes: int, sessions: int) -> list[str]:
    """`refreshes` rotations spread over `sessions` fresh sessions; returns their access tokens."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        logins = []
        for _ in range(sessions):
            r = await client.post("/auth/login", json=LOGIN_BODY)
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
    dsn = _raw(database_url)
    rows = {"before": asyncio.run(checks.count_token_rows(dsn))}
    access = asyncio.run(refresh_chains(base, refreshes, sessions))
    rows[f"after {refreshes} refreshes ({sessions} sessions)"] = asyncio.run(
        checks.count_token_rows(dsn)
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
    return asyncio.run(checks.count_token_rows(_raw(database_url)))


def _raw(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://")


@dataclass
class Run:
    """Everything one benchmark run measured, for the report."""

    results: list[Result]
    stack_rounds: list[tuple[float, float]]  # (B0, B0 + our middleware) req/s, interleaved
    verify_under_login: tuple[Result, Result] | None = None
    updates: tuple[int, int] | None = None  # (session UPDATEs, verifies answered 200)
    lookup_rounds: list[tuple[float, float]] | None = None  # (small, large table) refresh req/s
    lookup_rows: tuple[int, int] | None = None
    # (argon2 verifies/s, mean of before and after; logins/s)
    login_rounds: list[tuple[float, float]] | None = None
    token_table: dict[str, int] | None = None
    # (B2, /auth/refresh) req/s, back to back: B2 is the design's floor (bench.ceiling)
    b2_rounds: list[tuple[float, float]] | None = None


def service_env(database_url: str) -> dict[str, str]:
    return {
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


def chain_tokens(base: str, path: str, chains: int) -> dict[str, str]:
    """Log in `chains` times, write one refresh token per line to `path`; returns the
    environment bench/lua/refresh_chain.lua reads (for wrk with 2 threads)."""
    Path(path).write_text("".join(login(base)["refresh_token"] + "\n" for _ in range(chains)))
    return {"TOKENS_FILE": path, "WRK_THREADS": "2"}


LOGIN_ENV = {"LOGIN_BODY": json.dumps(LOGIN_BODY)}  # what bench/lua/login.lua sends


def refresh_run(
    name: str, base: str, duration: int, chains: int = 8, floor: str | None = None
) -> Result:
    """`chains` clients, each walking its own rotation chain, over as many connections on 2 wrk
    threads, as the B0/B1 runs use. (One wrk thread per chain cost the load generator 0.07-0.10
    ms of the machine's CPU per refresh against 0.055 ms on 2 threads, taken from the service.
    32 chains measured the same throughput as 8, at four times the latency.) `floor`:
    bench.ceiling's URL; the chains, logged in at `base`, are then walked through its /b2."""
    fd, tokens = tempfile.mkstemp(suffix=".tokens")
    os.close(fd)
    try:
        env = chain_tokens(base, tokens, chains)
        if floor is not None:
            env["REFRESH_PATH"] = "/b2"
        return wrk(
            name,
            floor or base,
            duration=duration,
            threads=2,
            connections=chains,
            script=LUA / "refresh_chain.lua",
            env=env,
        )
    finally:
        os.unlink(tokens)


def login_run(name: str, base: str, duration: int, connections: int) -> Result:
    return wrk(
        name,
        f"{base}/auth/login",
        duration=duration,
        threads=2,
        connections=connections,
        script=LUA / "login.lua",
        env=LOGIN_ENV,
    )


def login_against_ceiling(base: str, duration: int, rounds: int = 3) -> list[tuple[float, Result]]:
    """Logins (8 connections) bracketed by the raw argon2 rate, `rounds` times: each run is
    compared with the mean of the ceiling measured just before and just after it, so a drift of
    the machine's speed during the pair moves both sides alike. The service is idle while the
    ceiling runs."""
    ceilings = [argon2_verify_rate()]
    runs = []
    for _ in range(rounds):
        runs.append(login_run("/auth/login (8 connections)", base, duration, 8))
        ceilings.append(argon2_verify_rate())
    return [(statistics.mean(ceilings[i : i + 2]), run) for i, run in enumerate(runs)]


def verify_while_logging_in(
    base: str, duration: int, auth: dict[str, str]
) -> tuple[Result, Result]:
    """A gateway's steady stream of /auth/verify (4 connections, 10 ms apart: at most 400/s)
    while 16 connections of logins keep both cores busy hashing."""
    with ThreadPoolExecutor(1) as pool:
        logins = pool.submit(login_run, "/auth/login (during verify)", base, duration + 2, 16)
        time.sleep(1.5)  # let the logins saturate the CPU first
        verify = wrk(
            "/auth/verify during logins",
            f"{base}/auth/verify",
            duration=duration,
            threads=2,
            connections=4,
            headers=auth,
            script=LUA / "paced.lua",
            env={"PACE_MS": "10"},
        )
        return verify, logins.result()


def session_updates_per_verifies(
    dsn: str, base: str, sessions: int = 50, verifies: int = 1000
) -> tuple[int, int]:
    """1000 /auth/verify over 50 sessions (wrk, 32 connections, tokens in turn), once the
    sessions have been idle for one touch interval (5 s by default), so each is due a slide.
    Returns (session row UPDATEs, requests)."""
    asyncio.run(checks.install_update_counter(dsn))
    with tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False) as fh:
        for _ in range(sessions):
            fh.write(login(base)["access_token"] + "\n")
    try:
        time.sleep(5.5)
        before = asyncio.run(checks.session_updates(dsn))
        result = wrk(
            "verify round robin",
            f"{base}/auth/verify",
            duration=30,
            threads=2,
            connections=32,
            script=LUA / "verify_round_robin.lua",
            env={"TOKENS_FILE": fh.name, "PER_THREAD": str(verifies // 2)},
        )
        after = asyncio.run(checks.session_updates(dsn, drop=True))
    finally:
        os.unlink(fh.name)
    if result.errors:
        raise RuntimeError(f"{result.errors} verify errors in the UPDATE count")
    return after - before, verifies


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
        "--lookup-rows", type=int, default=1_000_000, help="large refresh-token table (0 skips)"
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
    databases: list[str] = []
    processes: list[subprocess.Popen[bytes]] = []
    try:
        run = _measure(args, databases, processes)
    finally:
        for process in processes:
            stop(process)
        for name in databases:
            asyncio.run(drop_database(args.admin_dsn, name))
    report(run, args)
    return 0


def _new_database(args: argparse.Namespace, databases: list[str]) -> tuple[str, str]:
    """A migrated database with the bench user: (raw asyncpg DSN, SQLAlchemy URL)."""
    name = asyncio.run(create_database(args.admin_dsn))
    databases.append(name)
    raw_dsn = f"{args.admin_dsn.rpartition('/')[0]}/{name}"
    database_url = raw_dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    migrate.upgrade(database_url)
    asyncio.run(seed_user(database_url))
    return raw_dsn, database_url


def _measure(
    args: argparse.Namespace, databases: list[str], processes: list[subprocess.Popen[bytes]]
) -> Run:
    d, c, w = args.duration, args.connections, args.workers
    raw_dsn, database_url = _new_database(args, databases)
    ports = [_free_port() for _ in range(3)]
    processes.append(start_ceiling("bench.ceiling:app", ports[0], w, raw_dsn))
    processes.append(start_ceiling("bench.ceiling:stacked_app", ports[1], w, raw_dsn))
    env = service_env(database_url)
    processes.append(start_service(ports[2], w, env))
    ceiling, stacked, service = (f"http://127.0.0.1:{p}" for p in ports)

    results = [
        wrk("B0 constant JSON", f"{ceiling}/b0", duration=d, threads=2, connections=c),
        wrk("B1 one asyncpg SELECT", f"{ceiling}/b1", duration=d, threads=2, connections=c),
    ]
    # Interleaved, so that drift in the machine's speed hits both sides alike.
    stack_rounds = []
    for _ in range(5):
        bare = wrk("b0", f"{ceiling}/b0", duration=max(2, d // 2), threads=2, connections=c)
        ours = wrk("b0+", f"{stacked}/b0", duration=max(2, d // 2), threads=2, connections=c)
        stack_rounds.append((bare.rps, ours.rps))
    stop(processes.pop(1))

    auth = {"Authorization": f"Bearer {login(service)['access_token']}"}
    for name, path in (
        ("/auth/session-status", "/auth/session-status"),
        ("/auth/verify (forward-auth)", "/auth/verify"),
        ("/auth/me (slides)", "/auth/me"),
    ):
        results.append(
            wrk(name, f"{service}{path}", duration=d, threads=2, connections=c, headers=auth)
        )
    results.append(refresh_run("/auth/refresh (8 chains)", service, d))
    b2_rounds = []
    for _ in range(3):  # back to back: drift in the machine's speed hits both sides alike
        half = max(2, d // 2)
        floor = refresh_run("B2", service, half, floor=ceiling)
        b2_rounds.append((floor.rps, refresh_run("refresh", service, half).rps))
    login_rounds = login_against_ceiling(service, d)
    results.append(login_rounds[0][1])
    run = Run(results=results, stack_rounds=stack_rounds, b2_rounds=b2_rounds)
    run.login_rounds = [(ceiling_rate, result.rps) for ceiling_rate, result in login_rounds]
    run.verify_under_login = verify_while_logging_in(service, d, auth)
    run.updates = session_updates_per_verifies(raw_dsn, service)
    for process in processes[::-1]:
        stop(process)
    processes.clear()
    if args.lookup_rows:
        _lookup(args, run, databases, processes, (raw_dsn, database_url))
    if args.table_refreshes:
        processes.append(start_service(ports[2], w, env))
        run.token_table = token_table(service, database_url, args.table_refreshes, 50)
        stop(processes.pop())
    return run


def _lookup(
    args: argparse.Namespace,
    run: Run,
    databases: list[str],
    processes: list[subprocess.Popen[bytes]],
    small: tuple[str, str],
) -> None:
    """Refresh throughput on the bench database against one whose token table holds
    `--lookup-rows` rows, servers side by side and runs interleaved."""
    large = _new_database(args, databases)
    large_rows = asyncio.run(checks.fill_token_table(large[0], args.lookup_rows))
    small_rows = asyncio.run(checks.count_token_rows(small[0]))
    ports = [_free_port(), _free_port()]
    for port, (_, url) in zip(ports, (small, large), strict=True):
        processes.append(start_service(port, args.workers, service_env(url)))
    rounds = []
    duration = max(2, args.duration // 2)
    for _ in range(5):
        a = refresh_run("small", f"http://127.0.0.1:{ports[0]}", duration)
        b = refresh_run("large", f"http://127.0.0.1:{ports[1]}", duration)
        rounds.append((a.rps, b.rps))
    for process in processes[::-1]:
        stop(process)
    processes.clear()
    run.lookup_rounds, run.lookup_rows = rounds, (small_rows, large_rows)


def report(run: Run, args: argparse.Namespace) -> None:
    by_name = {r.name: r for r in run.results}
    b0, b1 = by_name["B0 constant JSON"], by_name["B1 one asyncpg SELECT"]
    print(
        f"\nPostgreSQL, {args.workers} uvicorn workers, wrk {args.duration}s, "
        f"{args.connections} connections (refresh: 8 chains, login: 8 connections)\n"
    )
    columns = ("req/s", 9), ("p50 ms", 7), ("p99 ms", 7), ("errors", 6), ("/ B1", 5)
    print(f"| {'endpoint':<30} | " + " | ".join(f"{n:>{w}}" for n, w in columns) + " |")
    print(f"|{'-' * 32}|{'-' * 11}|{'-' * 9}|{'-' * 9}|{'-' * 8}|{'-' * 7}|")
    extra = list(run.verify_under_login or ())
    for r in [*run.results, *extra]:
        print(
            f"| {r.name:<30} | {r.rps:>9.0f} | {r.p50_ms:>7.2f} | {r.p99_ms:>7.2f} | "
            f"{r.errors:>6} | {r.rps / b1.rps:>5.2f} |"
        )
    print(f"\nB1 / B0 = {b1.rps / b0.rps:.2f}")
    _report_targets(run, by_name, b1)
    pairs = " ".join(f"{a:.0f}/{b:.0f}" for a, b in run.stack_rounds)
    print(f"\nB0 / B0 with our middleware, req/s, back to back: {pairs}")
    if run.b2_rounds:
        pairs = " ".join(f"{a:.0f}/{b:.0f}" for a, b in run.b2_rounds)
        print(f"B2 / /auth/refresh, req/s, back to back: {pairs}")
    if run.login_rounds:
        pairs = " ".join(f"{a:.1f}/{b:.1f}" for a, b in run.login_rounds)
        print(f"argon2id verifies/s on 2 cores (mean before/after) / logins/s: {pairs}")
    if run.lookup_rounds:
        pairs = " ".join(f"{a:.0f}/{b:.0f}" for a, b in run.lookup_rounds)
        print(f"refresh req/s, small / large token table, back to back: {pairs}")
    if run.token_table:
        print("\nrefresh_tokens rows:")
        for label, count in run.token_table.items():
            print(f"  {label:<48} {count:>8}")


def _report_targets(run: Run, by_name: dict[str, Result], b1: Result) -> None:
    rows: list[tuple[str, str, str, bool]] = []

    def ratio(name: str, target: float) -> None:
        value = by_name[name].rps / b1.rps
        rows.append((f"{name} / B1", f"{value:.2f}", f">= {target}", value >= target))

    ratio("/auth/verify (forward-auth)", 0.85)
    ratio("/auth/session-status", 0.85)
    if run.b2_rounds:
        # Issue 20's yardstick: a refresh against the same rotation function and signature
        # with nothing around them, not against B1's one read.
        to_b2 = statistics.median([ours / floor for floor, ours in run.b2_rounds])
        rows.append(
            (
                f"/auth/refresh / B2 (median of {len(run.b2_rounds)} back-to-back pairs)",
                f"{to_b2:.2f}",
                ">= 0.80",
                to_b2 >= 0.80,
            )
        )
    if run.login_rounds:
        login = statistics.median([logins / ceiling for ceiling, logins in run.login_rounds])
        rows.append(
            (
                f"login / argon2id ceiling on 2 cores (median of {len(run.login_rounds)}"
                " bracketed runs)",
                f"{login:.2f}",
                ">= 0.85",
                login >= 0.85,
            )
        )
    if run.verify_under_login:
        verify, logins = run.verify_under_login
        label = (
            f"p99 /auth/verify ({verify.rps:.0f}/s, paced) while logins take the CPU"
            f" ({logins.rps:.1f}/s)"
        )
        rows.append((label, f"{verify.p99_ms:.1f} ms", "<= 50 ms", verify.p99_ms <= 50))
    if run.updates:
        updates, ok = run.updates
        per_1000 = updates * 1000 / max(ok, 1)
        rows.append(
            (
                f"session UPDATEs per {ok} verifies over 50 sessions",
                f"{per_1000:.0f}",
                "<= 60",
                per_1000 <= 60 and ok > 0,
            )
        )
    if run.lookup_rounds and run.lookup_rows:
        # Each round runs the two sides back to back: the median of the per-round ratios
        # cancels the machine's drift better than a ratio of medians.
        ratio_ = statistics.median([b / a for a, b in run.lookup_rounds])
        rows.append(
            (
                f"refresh at {run.lookup_rows[1]:,} / at {run.lookup_rows[0]:,} token rows"
                f" (median of {len(run.lookup_rounds)} back-to-back pairs)",
                f"{ratio_:.2f}",
                ">= 0.9",
                ratio_ >= 0.9,
            )
        )
    cost = 1 - statistics.median([ours / bare for bare, ours in run.stack_rounds])
    rows.append(
        (
            f"middleware stack cost on B0 (median of {len(run.stack_rounds)} back-to-back pairs)",
            f"{cost:.1%}",
            "<= 10%",
            cost <= 0.10,
        )
    )
    print("\n| target | measured | goal | met |\n|---|---|---|---|")
    for label, value, goal, met in rows:
        print(f"| {label} | {value} | {goal} | {'yes' if met else 'NO'} |")


if __name__ == "__main__":
    sys.exit(main())
