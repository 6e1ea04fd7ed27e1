"""`python -m bench.cpu login|refresh`: where the CPU time of one request goes.

Starts the service as `python -m bench` does (2 workers, a fresh PostgreSQL database), drives
`/auth/login` (8 connections) or `/auth/refresh` (8 chains) with wrk for a few rounds, and prints
per request the CPU time of the workers' event-loop threads (user and system), of their other
threads (password hashing), of PostgreSQL's processes, and of wrk. The throughput ratios of
`python -m bench` say whether a change helped; this says where the time went. Linux only: it
reads /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.__main__ import (
    LOGIN_ENV,
    LUA,
    _free_port,
    _new_database,
    chain_tokens,
    drop_database,
    service_env,
    start_service,
    stop,
    wrk,
)

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(path: Path) -> list[str]:
    # The fields after the command name, which may itself hold spaces and parentheses.
    return path.read_text().rpartition(")")[2].split()


def _cpu(path: Path) -> tuple[float, float]:
    """(user, system) seconds of a process or thread given its /proc stat file."""
    fields = _stat_fields(path)
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command name) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int(_stat_fields(entry / "stat")[1])
                table[int(entry.name)] = (parent, (entry / "comm").read_text().strip())
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    return table


def _descendants(root: int, table: dict[int, tuple[int, str]]) -> list[int]:
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in table.items() if ppid == parent]
        found += children
        frontier += children
    return found


@dataclass
class Sample:
    loop_user: float = 0.0
    loop_system: float = 0.0
    other_threads: float = 0.0
    postgres: float = 0.0
    wrk: float = 0.0


def _sample(service_pid: int) -> Sample:
    table = _processes()
    sample = Sample()
    for pid in [service_pid, *_descendants(service_pid, table)]:
        for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
            try:
                user, system = _cpu(task / "stat")
            except FileNotFoundError:
                continue
            if int(task.name) == pid:  # a worker's main thread runs its event loop
                sample.loop_user += user
                sample.loop_system += system
            else:
                sample.other_threads += user + system
    for pid, (_, name) in table.items():
        if name == "postgres":
            try:
                sample.postgres += sum(_cpu(Path(f"/proc/{pid}/stat")))
            except FileNotFoundError:
                continue
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has been waited for
    sample.wrk = usage.ru_utime + usage.ru_stime
    return sample


def _load(kind: str, base: str, tokens_file: str) -> tuple[str, Path, dict[str, str]]:
    """wrk's URL, script and environment for one round (refresh: fresh chains, made now, so
    that their logins are not counted in the round)."""
    if kind == "login":
        return f"{base}/auth/login", LUA / "login.lua", LOGIN_ENV
    return base, LUA / "refresh_chain.lua", chain_tokens(base, tokens_file, 8)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__)
    parser.add_argument("kind", choices=["login", "refresh"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument(
        "--admin-dsn",
        default=os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    databases: list[str] = []
    fd, tokens = tempfile.mkstemp(suffix=".tokens")
    os.close(fd)
    service = None
    print(f"{args.kind}, 2 workers, wrk {args.duration}s; CPU ms per request:")
    print("req/s     loop user  loop sys  other threads  postgres  wrk")
    try:
        _, database_url = _new_database(args, databases)
        port = _free_port()
        service = start_service(port, 2, service_env(database_url))
        for _ in range(args.rounds):
            url, script, env = _load(args.kind, f"http://127.0.0.1:{port}", tokens)
            before = _sample(service.pid)
            rps = wrk(
                args.kind,
                url,
                duration=args.duration,
                threads=2,
                connections=8,
                script=script,
                env=env,
            ).rps
            after = _sample(service.pid)
            per = 1000 / (rps * args.duration)
            print(
                f"{rps:8.1f}  {(after.loop_user - before.loop_user) * per:9.3f}"
                f"  {(after.loop_system - before.loop_system) * per:8.3f}"
                f"  {(after.other_threads - before.other_threads) * per:13.3f}"
                f"  {(after.postgres - before.postgres) * per:8.3f}"
                f"  {(after.wrk - before.wrk) * per:5.3f}",
                flush=True,
            )
    finally:
        os.unlink(tokens)
        if service is not None:
            stop(service)
        for name in databases:
            asyncio.run(drop_database(args.admin_dsn, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
