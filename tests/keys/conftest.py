"""A database of the test's own: key commands change the signing keys every app on a database
shares, which the run-wide databases must not see."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.databases import fresh_database


@pytest.fixture(params=["sqlite", "postgres"])
async def private_database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A fresh, migrated database (SQLite and PostgreSQL), dropped afterwards."""
    async with fresh_database(request.param, tmp_path) as url:
        yield url
