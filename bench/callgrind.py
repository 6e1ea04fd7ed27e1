"""`python -m bench.callgrind`: instructions per request of the middleware stack, against the
bare request it wraps (docs/performance.md, "Middleware").

Wall-clock pairs of B0 and B0 with the stack swing by 5-20 points on this kind of machine;
instruction counts do not (the same binary, inputs and environment give the same count, whatever
else the machine does). B0 (bench.ceiling: one route answering constant JSON) is called in
process, straight through its ASGI interface, with and without `app.main.add_middleware_stack`,
under `valgrind --tool=callgrind`; each variant runs twice, with WARM + N and WARM + 3 N requests,
and the difference of the two totals divided by 2 N is the cost of one request without the
start-up and the imports.

Usage: python -m bench.callgrind [--requests 1000]  (needs Debian's valgrind)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
from typing import Any

WARM = 200
_COLLECTED = re.compile(r"Collected : (\d+)")


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/b0",
        "raw_path": b"/b0",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"accept", b"*/*")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _requests(app: Any, count: int) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for _ in range(count):
        await app(_scope(), receive, send)
    if statuses != [200] * count:
        raise SystemExit(f"unexpected answers: {sorted(set(statuses))}")


def _inner(variant: str, count: int) -> None:
    """Runs under valgrind: build the variant, then answer `count` requests."""
    from bench import ceiling

    app = ceiling.stacked_app if variant == "stack" else ceiling.app
    asyncio.run(_requests(app, count))


def _instructions(variant: str, count: int) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        "-m",
        "bench.callgrind",
        "--inner",
        variant,
        "--requests",
        str(count),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0", "APP_ENV": "development"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"callgrind run failed ({done.returncode}): {done.stderr[-2000:]}")
    return int(found.group(1))


def per_request(variant: str, requests: int) -> float:
    few = _instructions(variant, WARM + requests)
    many = _instructions(variant, WARM + 3 * requests)
    return (many - few) / (2 * requests)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.callgrind", description=__doc__)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--inner", choices=["bare", "stack"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        _inner(args.inner, args.requests)
        return 0
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    bare = per_request("bare", args.requests)
    stack = per_request("stack", args.requests)
    print(f"B0 bare: {bare / 1000:.1f}k instructions per request")
    print(f"B0 with the middleware stack: {stack / 1000:.1f}k")
    print(f"the stack: +{(stack - bare) / 1000:.1f}k, {100 * (stack - bare) / bare:.1f}% of B0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
