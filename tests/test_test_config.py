"""The test suite's shared resources are configurable (issue 16): TEST_DATABASE_PREFIX names
the PostgreSQL databases it creates, TEST_REDIS_URL the Redis the shared-limit tests use."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_CREATE_AND_DROP = """
import asyncio
from tests.conftest import TEST_REDIS_URL, _create_pg_database, _drop_pg_database

async def main():
    url = await _create_pg_database()
    if url is not None:
        await _drop_pg_database(url)
    print(url)
    print(TEST_REDIS_URL)

asyncio.run(main())
"""


_OURS = ("TEST_DATABASE_PREFIX", "TEST_REDIS_URL")


def _run(**env: str) -> tuple[str, str]:
    inherited = {k: v for k, v in os.environ.items() if k not in _OURS}
    result = subprocess.run(
        [sys.executable, "-c", _CREATE_AND_DROP],
        capture_output=True,
        text=True,
        env={**inherited, **env},
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    database, redis = result.stdout.split()
    if database == "None":
        pytest.skip("no PostgreSQL at TEST_POSTGRES_URL")
    return database.rpartition("/")[2], redis


def test_defaults_are_todays() -> None:
    database, redis = _run()
    assert database.startswith("authsvc_test_")
    assert redis == "redis://127.0.0.1:6379/0"


def test_environment_names_the_database_prefix_and_redis() -> None:
    prefix = f"authsvc_ci{uuid.uuid4().hex[:6]}_"
    database, redis = _run(TEST_DATABASE_PREFIX=prefix, TEST_REDIS_URL="redis://127.0.0.1:6380/7")
    assert database.startswith(prefix)
    assert redis == "redis://127.0.0.1:6380/7"
