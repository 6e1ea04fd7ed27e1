"""`python -m bench.dpop`: what DPoP (RFC 9449) costs on the two hot paths, PostgreSQL, the
service under `python -m app serve` with 2 workers.

Paired runs, alternating, in one process of the service:
- refresh: 8 rotation chains of unbound sessions against 8 chains of bound sessions, each
  bound refresh with a fresh proof (an ES256 verification and a replay-cache write);
- forward-auth: `GET /auth/verify` with unbound access tokens (Bearer) against bound ones
  (`Authorization: DPoP` and a proof with `ath`, checked against the request's own URL).

Proofs are signed before each run (wrk cannot sign), each used once, all well inside the iat
window. The replay cache is the database unless `--replay redis` (REDIS_URL).
Target (issue 18): with / without >= 0.8 for each. After each round's verify pair, the floor
pair: bench.ceiling's B1 (one asyncpg SELECT) against B1P (the same plus one ES256 proof check
and one replay-cache INSERT, nothing else), the least the verify ratio could be here.
Each run also shows where the CPU went, in microseconds per request (read from /proc, as
`python -m bench.cpu` does): the service's processes, PostgreSQL's, wrk's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from bench.__main__ import (
    LOGIN_BODY,
    LUA,
    Result,
    _free_port,
    _new_database,
    drop_database,
    login,
    refresh_run,
    service_env,
    start_ceiling,
    start_service,
    stop,
    wrk,
)
from bench.cpu import Sample, _sample

TARGET = 0.8
CHAINS = 8


class Prover:
    """One client key; proofs as any RFC 9449 client makes them."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.header = {
            "typ": "dpop+jwt",
            "jwk": json.loads(ECAlgorithm.to_jwk(self.key.public_key())),
        }

    def proof(self, method: str, path: str, token: str | None = None) -> str:
        claims: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "htm": method,
            "htu": self.base + path,
            "iat": int(time.time()),
        }
        if token is not None:
            digest = hashlib.sha256(token.encode()).digest()
            claims["ath"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        return jwt.encode(claims, self.key, algorithm="ES256", headers=self.header)

    def login(self) -> dict[str, str]:
        response = httpx.post(
            f"{self.base}/auth/login",
            json=LOGIN_BODY,
            headers={"DPoP": self.proof("POST", "/auth/login")},
            timeout=30,
        )
        response.raise_for_status()
        body: dict[str, str] = response.json()
        assert body["token_type"] == "DPoP", body
        return body


def _lines(path: str, lines: list[str]) -> None:
    Path(path).write_text("".join(line + "\n" for line in lines))


def bound_refresh_run(prover: Prover, duration: int, expected_rps: float) -> Result:
    """As bench.__main__.refresh_run, with bound chains and a proof per refresh."""
    needed = int(expected_rps * duration * 1.6) + 2000
    with tempfile.TemporaryDirectory() as folder:
        tokens, proofs = f"{folder}/tokens", f"{folder}/proofs"
        _lines(tokens, [prover.login()["refresh_token"] for _ in range(CHAINS)])
        _lines(proofs, [prover.proof("POST", "/auth/refresh") for _ in range(needed)])
        env = {"TOKENS_FILE": tokens, "PROOFS_FILE": proofs, "WRK_THREADS": "2"}
        script = LUA / "refresh_chain.lua"
        return wrk(
            "refresh, DPoP",
            prover.base,
            duration=duration,
            threads=2,
            connections=CHAINS,
            script=script,
            env=env,
        )


def verify_run(
    name: str,
    base: str,
    lines: list[str],
    duration: int,
    connections: int,
    path: str = "/auth/verify",
) -> Result:
    with tempfile.TemporaryDirectory() as folder:
        pairs = f"{folder}/pairs"
        _lines(pairs, lines)
        env = {"PAIRS_FILE": pairs, "WRK_THREADS": "2", "VERIFY_PATH": path}
        return wrk(
            name,
            base,
            duration=duration,
            threads=2,
            connections=connections,
            script=LUA / "verify_dpop.lua",
            env=env,
        )


# Per run name, the CPU microseconds per request: (service, PostgreSQL, wrk), one per round.
CPU: dict[str, list[tuple[float, float, float]]] = {}


def _cpu_of(service_pid: int, duration: int, run: Callable[[], Result]) -> Result:
    before = _sample(service_pid)
    result = run()
    after = _sample(service_pid)
    requests = max(1.0, result.rps * duration)

    def per_request(pick: Callable[[Sample], float]) -> float:
        return (pick(after) - pick(before)) / requests * 1e6

    CPU.setdefault(result.name, []).append(
        (
            per_request(lambda s: s.loop_user + s.loop_system + s.other_threads),
            per_request(lambda s: s.postgres),
            per_request(lambda s: s.wrk),
        )
    )
    return result


def measure(
    base: str, service_pid: int, args: argparse.Namespace, floor: tuple[str, int] | None = None
) -> dict[str, list[tuple[Result, Result]]]:
    """`floor`: bench.ceiling's URL and process, for the B1 / B1P pair after each round's
    verify pair."""
    d, c = args.duration, args.connections
    prover = Prover(base)
    plain_tokens = [login(base)["access_token"] for _ in range(CHAINS)]
    bound_tokens = [prover.login()["access_token"] for _ in range(CHAINS)]
    rounds: dict[str, list[tuple[Result, Result]]] = {"refresh": [], "verify": [], "floor": []}
    for _ in range(args.rounds):
        without = _cpu_of(service_pid, d, partial(refresh_run, "refresh, Bearer", base, d, CHAINS))
        with_dpop = _cpu_of(service_pid, d, partial(bound_refresh_run, prover, d, without.rps))
        rounds["refresh"].append((without, with_dpop))
        plain = [f"Bearer {plain_tokens[i % CHAINS]}" for i in range(CHAINS)]
        without = _cpu_of(service_pid, d, partial(verify_run, "verify, Bearer", base, plain, d, c))
        needed = int(without.rps * d * 1.6) + 2000
        bound = []
        for i in range(needed):
            token = bound_tokens[i % CHAINS]
            bound.append(f"DPoP {token} {prover.proof('GET', '/auth/verify', token)}")
        with_dpop = _cpu_of(service_pid, d, partial(verify_run, "verify, DPoP", base, bound, d, c))
        rounds["verify"].append((without, with_dpop))
        if floor is not None:
            rounds["floor"].append(_floor_pair(floor, prover, needed, d, c))
    return rounds


def _floor_pair(
    floor: tuple[str, int], prover: Prover, needed: int, d: int, c: int
) -> tuple[Result, Result]:
    """bench.ceiling's B1 against B1P (B1 + one ES256 check + one replay write): the least a
    DPoP verify can cost on this machine (its CPU columns are the ceiling's processes)."""
    url, pid = floor
    plain = ["Bearer -"] * 2  # a line for each of wrk's threads
    proofs = [f"DPoP - {prover.proof('GET', '/b1p')}" for _ in range(needed)]
    b1 = _cpu_of(pid, d, partial(verify_run, "floor, B1", url, plain, d, c, "/b1"))
    b1p = _cpu_of(pid, d, partial(verify_run, "floor, B1P", url, proofs, d, c, "/b1p"))
    return b1, b1p


def report(rounds: dict[str, list[tuple[Result, Result]]], args: argparse.Namespace) -> bool:
    print(
        f"\nPostgreSQL, {args.workers} workers, replay cache: {args.replay}, "
        f"{args.rounds} rounds of {args.duration} s each side, alternating\n"
    )
    print(f"{'run':<18}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}", end="")
    print("   CPU us/request: service  postgres  wrk")
    met = True
    for name, pairs in rounds.items():
        for index, (without, with_dpop) in enumerate(pairs):
            for r in (without, with_dpop):
                service, postgres, client = CPU[r.name][index]
                print(
                    f"{r.name:<18}{r.rps:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.errors:>8}"
                    f"{service:>26.0f}{postgres:>10.0f}{client:>5.0f}"
                )
        ratios = [w.rps / b.rps for b, w in pairs]
        errors = sum(b.errors + w.errors for b, w in pairs)
        median = statistics.median(ratios)
        shown = ", ".join(f"{r:.2f}" for r in ratios)
        if name == "floor":
            print(
                f"  floor: B1P / B1 = {median:.2f} (rounds {shown}): the most verify's DPoP / "
                f"Bearer could be on this machine, errors {errors}\n"
            )
            continue
        ok = median >= TARGET and errors == 0
        met &= ok
        print(
            f"  {name}: DPoP / Bearer = {median:.2f} (rounds {shown}), target >= {TARGET}, "
            f"errors {errors}: {'met' if ok else 'MISSED'}\n"
        )
    return met


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dpop", description=__doc__)
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32, help="for /auth/verify")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--replay", choices=("db", "redis"), default="db")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument(
        "--admin-dsn",
        default=os.environ.get("BENCH_ADMIN_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 2
    databases: list[str] = []
    process: subprocess.Popen[bytes] | None = None
    ceiling: subprocess.Popen[bytes] | None = None
    try:
        raw_dsn, database_url = _new_database(args, databases)
        env = service_env(database_url)
        if args.replay == "redis":
            env["REDIS_URL"] = args.redis_url
        port = _free_port()
        # Production settings take the issuer's origin for proofs; this one is the bench's.
        env["DPOP_ORIGINS"] = json.dumps([f"http://127.0.0.1:{port}"])
        process = start_service(port, args.workers, env)
        floor_port = _free_port()
        ceiling = start_ceiling("bench.ceiling:app", floor_port, args.workers, raw_dsn)
        floor = (f"http://127.0.0.1:{floor_port}", ceiling.pid)
        rounds = measure(f"http://127.0.0.1:{port}", process.pid, args, floor)
    finally:
        for started in (process, ceiling):
            if started is not None:
                stop(started)
        for name in databases:
            asyncio.run(drop_database(args.admin_dsn, name))
    return 0 if report(rounds, args) else 1


if __name__ == "__main__":
    sys.exit(main())
