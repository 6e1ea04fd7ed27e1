"""Proofs the database recorded while Redis was down are not accepted again once Redis is back
(from the security review of issue 18): the replay cache writes them to Redis (backfill)
before Redis decides again.

A private redis-server (started and stopped here, by its own pid) plays the outage. It keeps
its data across the restart (appendfsync always), so the replay comes from the fallback
alone, not from Redis losing keys. (A frozen Redis, SIGSTOP, does not show it: the timed-out
SET is still in its socket buffer and lands when it thaws.)"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.conftest import Harness, make_settings, start_harness
from tests.dpop.test_routes import Client, bound_login, claims_of


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    def __init__(self, port: int, directory: str) -> None:
        self.port = port
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - a fixed local binary
            [
                "/usr/bin/redis-server",
                *("--port", str(self.port), "--dir", self.directory, "--save", ""),
                *("--appendonly", "yes", "--appendfsync", "always"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(5)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(_free_port(), str(tmp_path))
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis_harness(database_url: str, private_redis: PrivateRedis) -> AsyncIterator[Harness]:
    settings = make_settings(
        database_url,
        redis_url=f"redis://127.0.0.1:{private_redis.port}/0",
        redis_retry_interval=0.1,
    )
    async for h in start_harness(settings):
        yield h


async def _until_redis_decides_again(
    h: Harness, server: PrivateRedis, client: Client, access: str
) -> None:
    """Fresh proofs until one is recorded in Redis: the service uses Redis again (its first
    attempts may still fail on a loaded machine while Redis starts, and fall back)."""
    redis = Redis.from_url(f"redis://127.0.0.1:{server.port}/0")
    jkt = claims_of(access)["cnf"]["jkt"]
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            await asyncio.sleep(0.15)  # past REDIS_RETRY_INTERVAL
            jti = uuid.uuid4().hex
            proof = client.proof("GET", "/auth/me", token=access, jti=jti)
            headers = {"Authorization": f"DPoP {access}", "DPoP": proof}
            assert (await h.client.get("/auth/me", headers=headers)).status_code == 200
            key = hashlib.sha256(f"{jkt}\x00{jti}".encode()).hexdigest()
            if await redis.exists(f"authsvc:dpop-jti:{key}"):
                return
        raise AssertionError("the service did not use Redis again within 10 s")
    finally:
        await redis.aclose()


async def test_a_proof_accepted_during_a_redis_outage_is_not_accepted_again_after_it(
    redis_harness: Harness, private_redis: PrivateRedis
) -> None:
    client, tokens = await bound_login(redis_harness)
    access = tokens["access_token"]
    before = {
        "Authorization": f"DPoP {access}",
        "DPoP": client.proof("GET", "/auth/me", token=access),
    }
    assert (await redis_harness.client.get("/auth/me", headers=before)).status_code == 200
    private_redis.stop()  # an outage: restart, failover, network
    headers = {
        "Authorization": f"DPoP {access}",
        "DPoP": client.proof("GET", "/auth/me", token=access),
    }
    during = await redis_harness.client.get("/auth/me", headers=headers)
    assert during.status_code == 200, during.text[:200]  # recorded in the database
    private_redis.start()  # back, with every key it had (append-only file): nothing lost
    await _until_redis_decides_again(redis_harness, private_redis, client, access)
    # Redis kept what it had: the proof it recorded before the outage is still refused.
    assert (await redis_harness.client.get("/auth/me", headers=before)).status_code == 401
    replayed = await redis_harness.client.get("/auth/me", headers=headers)
    assert replayed.status_code == 401, replayed.text[:200]
