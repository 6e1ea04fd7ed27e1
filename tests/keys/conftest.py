"""A database of the test's own: key commands change the signing keys every app on a database
shares, which the run-wide databases must not see."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.core import migrate
from tests.conftest import REQUIRE_POSTGRES, _create_pg_database, _drop_pg_database


@pytest.fixture(params=["sqlite", "postgres"])
async def private_database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A fresh, migrated database (SQLite and PostgreSQL), dropped afterwards."""
    if request.param == "sqlite":
        url: str | None = f"sqlite+aiosqlite:///{tmp_path}/keys.db"
    else:
        url = await _create_pg_database()
        if url is None:
            if REQUIRE_POSTGRES:
                pytest.fail("PostgreSQL unreachable and REQUIRE_POSTGRES=1")
            pytest.skip("PostgreSQL unreachable")
    assert url is not None
    await asyncio.to_thread(migrate.upgrade, url)
    yield url
    if request.param == "postgres":
        await _drop_pg_database(url)
