"""PgBouncer for the tests: bench.pgbouncer's, with fewer server connections than the tests'
clients will open, so that consecutive transactions of one client land on different server
connections, as in production."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import pgbouncer as bench_pgbouncer
from bench.pgbouncer import BINARY, through

__all__ = ["pgbouncer", "require_pgbouncer", "through"]
SERVER_CONNECTIONS = 3  # per database and user: far fewer than the clients


def require_pgbouncer() -> None:
    if not Path(BINARY).exists():
        if os.environ.get("REQUIRE_PGBOUNCER") == "1":
            pytest.fail("pgbouncer is not installed (apt-get install -y pgbouncer)")
        pytest.skip("pgbouncer is not installed")


@contextlib.contextmanager
def pgbouncer(upstream: str, server_connections: int = SERVER_CONNECTIONS) -> Iterator[int]:
    """PgBouncer in front of the PostgreSQL `upstream` names; yields its port."""
    require_pgbouncer()
    with bench_pgbouncer.pgbouncer(upstream, server_connections) as port:
        yield port
