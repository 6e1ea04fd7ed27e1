"""`python -m bench.overload`: refresh at 3 x capacity, with and without admission control.

For each database (the SQLite default with one worker, as production runs it; PostgreSQL with
two), on a fresh database:
  1. peak: refresh rotation chains on 8 connections, each sending again as soon as it is
     answered; the 200s per second are the capacity;
  2. overload: refreshes offered at FACTOR x that capacity, an open-loop arrival stream
     (bench/lua/refresh_overload.lua) on enough connections to keep it open;
  3. the same overload against the service with admission control switched off
     (ADMISSION_MAX_IN_FLIGHT=100000), for comparison.
Every answer is timed by the load generator from the moment the request is built, by status.
Targets (issue 16): at 3 x capacity, goodput >= 90 % of the peak and p99 of the admitted
requests (the 200s) <= 250 ms.

`--gateway`: every phase goes through the shipped nginx recipe (deploy/nginx/authsvc.conf, one
nginx worker), whose in-flight limit on /auth/ refuses beyond it before the service sees the
request (`--gateway-limit` overrides the recipe's number).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.core import migrate
from bench.__main__ import (
    LOGIN_BODY,
    LUA,
    _free_port,
    create_database,
    drop_database,
    seed_user,
    service_env,
    start_service,
    stop,
)
from bench.gateway import nginx_in_front

PEAK_CONNECTIONS = 8
WRK_THREADS = 2
TARGET_GOODPUT = 0.90
TARGET_P99_S = 0.250


@dataclass
class Phase:
    name: str
    offered: float  # requests/s asked of the load generator (0: as fast as answered)
    duration: float
    latencies: dict[int, list[float]]  # status -> seconds, sorted
    load_cpu: float = 0.0  # cores the load generator itself took, of the machine's

    def rate(self, status: int) -> float:
        return len(self.latencies.get(status, [])) / self.duration

    def others(self) -> int:
        return sum(len(v) for k, v in self.latencies.items() if k not in (200, 503))

    def quantile(self, status: int, q: float) -> float | None:
        values = self.latencies.get(status, [])
        if not values:
            return None
        return values[min(len(values) - 1, int(q * len(values)))]


async def _login_many(base: str, count: int) -> list[str]:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        semaphore = asyncio.Semaphore(4)

        async def one() -> str:
            async with semaphore:
                response = await client.post("/auth/login", json=LOGIN_BODY)
                response.raise_for_status()
                return str(response.json()["refresh_token"])

        return list(await asyncio.gather(*(one() for _ in range(count))))


def run_phase(name: str, base: str, *, rate: float, connections: int, duration: int) -> Phase:
    workdir = Path(tempfile.mkdtemp(prefix="bench-overload-"))
    try:
        tokens = asyncio.run(_login_many(base, connections + 8))
        (workdir / "tokens").write_text("".join(t + "\n" for t in tokens))
        env = {
            **os.environ,
            "TOKENS_FILE": str(workdir / "tokens"),
            "WRK_THREADS": str(WRK_THREADS),
            "RATE": f"{rate:.3f}",
            "LATENCY_FILE": str(workdir / "latencies"),
        }
        cmd = ["wrk", f"-t{WRK_THREADS}", f"-c{connections}", f"-d{duration}s", "--timeout", "30s"]
        cmd += ["-s", str(LUA / "refresh_overload.lua"), base]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        phase = _read_phase(name, rate, workdir / "latencies")
        used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        phase.load_cpu = used / phase.duration
        return phase
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _read_phase(name: str, rate: float, path: Path) -> Phase:
    lines = path.read_text().splitlines()
    duration = float(lines[0].split()[1])
    latencies: dict[int, list[float]] = {}
    for line in lines[1:]:
        status, seconds = line.split()
        latencies.setdefault(int(status), []).append(float(seconds))
    for values in latencies.values():
        values.sort()
    return Phase(name, rate, duration, latencies)


def measure(label: str, database_url: str, workers: int, args: argparse.Namespace) -> list[Phase]:
    phases: list[Phase] = []
    for admission in (True, False):
        env = service_env(database_url)
        if not admission:
            env["ADMISSION_MAX_IN_FLIGHT"] = "100000"
        port = _free_port()
        process = start_service(port, workers, env)
        base = f"http://127.0.0.1:{port}"
        gateway = contextlib.ExitStack()
        try:
            if args.gateway:
                label_here = f"{label} via nginx"
                base = gateway.enter_context(nginx_in_front(base, _free_port(), args.gateway_limit))
            else:
                label_here = label
            if admission:
                peak = run_phase(
                    f"{label_here}: peak (8 connections, closed loop)",
                    base,
                    rate=0,
                    connections=PEAK_CONNECTIONS,
                    duration=args.duration,
                )
                phases.append(peak)
                capacity = peak.rate(200)
            offered = args.factor * capacity
            # Enough connections that the stream stays open: each may wait up to the latency
            # bound for its answer, so fewer would cap the rate actually offered.
            connections = max(args.connections, int(offered * TARGET_P99_S * 1.5))
            phases.append(
                run_phase(
                    f"{label_here}: {args.factor:g} x, admission {'on' if admission else 'off'}",
                    base,
                    rate=offered,
                    connections=connections,
                    duration=args.duration,
                )
            )
        finally:
            gateway.close()
            stop(process)
    return phases


def report(results: list[tuple[str, list[Phase]]], args: argparse.Namespace) -> None:
    print(f"\nRefresh under overload: {args.duration} s per phase, wrk {WRK_THREADS} threads")
    print(
        "| phase | offered/s | 200/s | 503/s | other | 200 p50 | 200 p99 | 200 max | 503 p99 "
        "| wrk cores |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for _, phases in results:
        for p in phases:
            offered = f"{p.offered:.0f}" if p.offered else "closed loop"
            print(
                f"| {p.name} | {offered} | {p.rate(200):.0f} | {p.rate(503):.0f} | {p.others()} "
                f"| {_ms(p.quantile(200, 0.5))} | {_ms(p.quantile(200, 0.99))} "
                f"| {_ms(p.quantile(200, 1.0))} | {_ms(p.quantile(503, 0.99))} "
                f"| {p.load_cpu:.2f} |"
            )
    print("\n| target | measured | goal | met |")
    print("|---|---|---|---|")
    for label, phases in results:
        peak, shed = phases[0], phases[1]
        goodput = shed.rate(200) / peak.rate(200) if peak.rate(200) else 0.0
        p99 = shed.quantile(200, 0.99)
        met_p99 = p99 is not None and p99 <= TARGET_P99_S
        print(
            f"| {label}: goodput at {args.factor:g} x / peak | {goodput:.2f} "
            f"| >= {TARGET_GOODPUT} | {'yes' if goodput >= TARGET_GOODPUT else 'NO'} |"
        )
        print(
            f"| {label}: p99 of admitted at {args.factor:g} x | {_ms(p99)} "
            f"| <= {TARGET_P99_S * 1000:.0f} ms | {'yes' if met_p99 else 'NO'} |"
        )


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _sqlite_url(folder: str) -> str:
    url = f"sqlite+aiosqlite:///{folder}/auth.db"
    migrate.upgrade(url)
    asyncio.run(seed_user(url))
    return url


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__)
    parser.add_argument("--duration", type=int, default=10, help="seconds per phase")
    parser.add_argument("--factor", type=float, default=3.0, help="offered load / capacity")
    parser.add_argument(
        "--connections", type=int, default=96, help="least connections when overloaded"
    )
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--gateway", action="store_true", help="through the nginx recipe")
    parser.add_argument("--gateway-limit", type=int, default=None, help="nginx's in-flight limit")
    parser.add_argument(
        "--admin-dsn",
        default=os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    results: list[tuple[str, list[Phase]]] = []
    if args.database in ("sqlite", "both"):
        with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as folder:
            results.append(("SQLite", measure("SQLite", _sqlite_url(folder), 1, args)))
    if args.database in ("postgresql", "both"):
        name = asyncio.run(create_database(args.admin_dsn))
        try:
            url = f"{args.admin_dsn.rpartition('/')[0]}/{name}".replace(
                "postgresql://", "postgresql+asyncpg://", 1
            )
            migrate.upgrade(url)
            asyncio.run(seed_user(url))
            results.append(("PostgreSQL", measure("PostgreSQL", url, 2, args)))
        finally:
            asyncio.run(drop_database(args.admin_dsn, name))
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
