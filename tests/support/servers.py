"""Real uvicorn processes for tests that need the network or more than one process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, TypeVar

import httpx

from bench.processes import free_port as free_port  # re-exported: the tests' helpers
from bench.processes import output_file, output_tail
from bench.processes import stop_process as stop_process
from tests.conftest import TEST_SECRET

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "https://auth.test"
AUDIENCE = "authsvc-test"


T = TypeVar("T")


@contextlib.contextmanager
def started_together(*servers: contextlib.AbstractContextManager[T]) -> Iterator[list[T]]:
    """Enter several server contexts at once: each start waits for its own process to answer,
    so starting them one after another would add those waits up. Whatever started is stopped
    on the way out, also when another failed to start."""
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(len(servers)) as pool:
        futures = [pool.submit(server.__enter__) for server in servers]
        started, failure = [], None
        for server, future in zip(servers, futures, strict=True):
            try:
                started.append(future.result())
            except BaseException as exc:  # collect it; stop what did start first
                failure = failure or exc
            else:
                stack.push(server.__exit__)
        if failure is not None:
            raise failure
        yield started


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "SECRET_KEY": TEST_SECRET,
        "ENVIRONMENT": "test",
        "JWT_ISSUER": ISSUER,
        "JWT_AUDIENCE": AUDIENCE,
        "PRUNE_INTERVAL": "0",
        "LOG_LEVEL": "WARNING",
        "RATE_LIMITS_ENABLED": "false",  # tests of the limits turn them on
        "SESSION_CACHE_TTL": "0",  # tests of the cache turn it on
        "PASSWORD_HASH_PROFILE": "test",  # near-free argon2, as make_settings
        **extra,
    }


@contextlib.contextmanager
def uvicorn_server(
    database_url: str,
    *,
    factory: str = "app.main:create_app",  # the ASGI target (a factory unless is_factory=False)
    workers: int = 1,
    env: dict[str, str] | None = None,
    is_factory: bool = True,
    serve: bool = False,  # `python -m app serve` (migrations, then our uvicorn configuration)
    port: int | None = None,  # known beforehand, e.g. to name the server its own issuer
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start uvicorn on a free port, wait until /healthz answers, stop it afterwards."""
    port = port or free_port()
    where = ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    if serve:
        command = ["app", "serve", *where]
    else:
        command = [
            "uvicorn",
            factory,
            *(["--factory"] if is_factory else []),
            *where,
            "--no-access-log",
        ]
    output = output_file()
    process = subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        env=server_env(database_url, **(env or {})),
        stdout=subprocess.DEVNULL,
        stderr=output,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base_url, process, output)
        yield base_url, process
    finally:
        stop_process(process)
        output.close()


def _wait_healthy(
    base_url: str, process: subprocess.Popen[bytes], output: IO[bytes], timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = output_tail(output)
            raise RuntimeError(f"server exited with {process.returncode}: {err}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError("server did not become healthy")


def wait_listening(port: int, deadline: float) -> None:
    """Until 127.0.0.1:`port` takes connections or the monotonic `deadline` passes. Uvicorn
    binds its socket after it reports "Application startup complete": on a loaded machine a
    client in between was refused."""
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)


async def create_user_in(database_url: str, *, prefix: str = "user", role: str = "user") -> str:
    """A user created straight in a database that a server process (not this one) serves."""
    from app.core.clock import Clock
    from app.core.db import create_engine
    from app.core.security import PasswordHasher
    from app.core.settings import PasswordHashProfile
    from app.users import service as users
    from tests.conftest import PASSWORD

    email = f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"
    engine = create_engine(database_url)
    hasher = PasswordHasher(profile=PasswordHashProfile.test)  # as the servers (server_env)
    try:
        password_hash = await hasher.hash(PASSWORD)
        async with engine.begin() as conn:
            await users.insert_new_user(
                conn, email=email, password_hash=password_hash, role=role, now=Clock().now()
            )
    finally:
        hasher.close()
        await engine.dispose()
    return email
