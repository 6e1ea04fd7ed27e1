"""A fresh, migrated database of its own, for tests whose rule is about the whole users table
(the last admin) or about a migration: the run's shared databases hold every other test's
rows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from app.core import migrate
from tests.conftest import REQUIRE_POSTGRES, _create_pg_database, _drop_pg_database


@asynccontextmanager
async def fresh_database(kind: str, tmp_path: Path, revision: str = "head") -> AsyncIterator[str]:
    """The URL of a new database of `kind` ("sqlite" or "postgres") migrated to `revision`."""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/fresh.db"
    else:
        created = await _create_pg_database()
        if created is None:
            if REQUIRE_POSTGRES:
                pytest.fail("PostgreSQL unreachable and REQUIRE_POSTGRES=1")
            pytest.skip("PostgreSQL unreachable")
        url = created
    try:
        await asyncio.to_thread(migrate.upgrade, url, revision)
        yield url
    finally:
        if kind == "postgres":
            await _drop_pg_database(url)
