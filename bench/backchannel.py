"""`python -m bench.backchannel`: back-channel logout latency, from a logout's commit to the
logout token's arrival at a receiver, over 1,000 logouts on PostgreSQL.

Starts, on a fresh database of the PostgreSQL server at --postgres, this service
(`python -m app serve`) configured with one back-channel logout client, and that client: a
receiver process (bench/backchannel_receiver.py, uvicorn) that logs each token's `sid` and
arrival time. Logs in N sessions, then logs them out (--concurrency at a time) and prints the
percentiles of receiver arrival minus the moment the logout's 204 reached the client (the
commit happened before the response was sent: this slightly understates the latency) and
minus the moment the logout was sent (an upper bound). One host, one clock (time.time()).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from app.core import migrate
from bench.__main__ import SECRET, create_database, drop_database
from tests.support.servers import create_user_in, free_port, uvicorn_server

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery staple"


def start_receiver(port: int, log: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.backchannel_receiver:app",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, "BENCH_RECEIVER_LOG": str(log)},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/", timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the receiver did not start")


async def _sessions(base: str, email: str, count: int) -> list[tuple[str, str]]:
    """(session id, access token) of `count` new sessions."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        semaphore = asyncio.Semaphore(8)

        async def one() -> tuple[str, str]:
            async with semaphore:
                response = await client.post(
                    "/auth/login", json={"email": email, "password": PASSWORD}
                )
                response.raise_for_status()
                body = response.json()
                return body["session"]["id"], body["access_token"]

        return await asyncio.gather(*(one() for _ in range(count)))


async def _logouts(
    base: str, sessions: list[tuple[str, str]], concurrency: int
) -> dict[str, tuple[float, float]]:
    """sid -> (logout sent, 204 received), unix times."""
    times: dict[str, tuple[float, float]] = {}
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:

        async def one(sid: str, token: str) -> None:
            async with semaphore:
                while True:  # an honest client retries a 503 (admission control sheds load)
                    sent = time.time()
                    response = await client.post(
                        "/auth/logout", headers={"Authorization": f"Bearer {token}"}
                    )
                    answered = time.time()
                    if response.status_code != 503:
                        break
                    await asyncio.sleep(0.05)
                assert response.status_code == 204, response.text
                times[sid] = (sent, answered)

        await asyncio.gather(*(one(sid, token) for sid, token in sessions))
    return times


def _wait_for_arrivals(log: Path, count: int, seconds: float) -> dict[str, float]:
    deadline = time.monotonic() + seconds
    while len(arrivals := _arrivals(log)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return arrivals


def _arrivals(log: Path) -> dict[str, float]:
    arrivals: dict[str, float] = {}
    for line in log.read_text().splitlines():
        sid, at = line.split()
        arrivals.setdefault(sid, float(at))
    return arrivals


def _percentiles(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return f"p50 {q[49]:.1f} ms, p99 {q[98]:.1f} ms, max {ms[-1]:.1f} ms"


async def _run(args: argparse.Namespace, database_url: str) -> int:
    await asyncio.to_thread(migrate.upgrade, database_url)
    email = await create_user_in(database_url, prefix="bench")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        log = Path(tmp) / "arrivals.log"
        log.touch()
        port = free_port()
        receiver = start_receiver(port, log)
        stack.callback(receiver.terminate)
        clients = f'[{{"client_id": "bench", "uri": "http://127.0.0.1:{port}/bcl"}}]'
        base, _ = stack.enter_context(
            uvicorn_server(
                database_url,
                serve=True,
                workers=args.workers,
                env={"BACKCHANNEL_LOGOUT_CLIENTS": clients, "SECRET_KEY": SECRET},
            )
        )
        sessions = await _sessions(base, email, args.logouts)
        times = await _logouts(base, sessions, args.concurrency)
        arrivals = await asyncio.to_thread(_wait_for_arrivals, log, len(times), 60)
    missing = [sid for sid in times if sid not in arrivals]
    after_commit = [arrivals[sid] - times[sid][1] for sid in times if sid in arrivals]
    after_send = [arrivals[sid] - times[sid][0] for sid in times if sid in arrivals]
    print(
        f"\nBack-channel logout on PostgreSQL: {len(times)} logouts, {args.concurrency} at a "
        f"time, serve --workers {args.workers}, one receiver"
    )
    print(f"  delivered: {len(arrivals)} of {len(times)} ({len(missing)} missing after 60 s)")
    print(f"  logout answered (committed) -> receiver: {_percentiles(after_commit)}")
    print(f"  logout sent -> receiver:                 {_percentiles(after_send)}")
    early = sum(1 for v in after_commit if v < 0)
    print(f"  arrivals before the 204 reached the client: {early} (the commit precedes the 204)")
    return 1 if missing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server (admin URL); a fresh database is created and dropped",
    )
    parser.add_argument("--logouts", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    admin = args.postgres.replace("postgresql+asyncpg://", "postgresql://")
    name = asyncio.run(create_database(admin))
    base, _, _ = args.postgres.rpartition("/")
    try:
        return asyncio.run(
            _run(args, f"{base}/{name}".replace("postgresql://", "postgresql+asyncpg://"))
        )
    finally:
        asyncio.run(drop_database(admin, name))


if __name__ == "__main__":
    sys.exit(main())
