"""Readiness queries: is the database reachable, and at the schema version this code expects."""

from __future__ import annotations

import functools

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.migrate import alembic_config


@functools.cache
def expected_revisions() -> frozenset[str]:
    """The head revision(s) of the migrations shipped with this code (read once per process)."""
    script = ScriptDirectory.from_config(alembic_config(""))
    return frozenset(script.get_heads())


def _current_heads(connection: Connection) -> tuple[str, ...]:
    # Alembic's own reader: an empty tuple, not an error, when alembic_version does not exist.
    return MigrationContext.configure(connection).get_current_heads()


async def database_revisions(conn: AsyncConnection) -> frozenset[str]:
    """The revision(s) recorded in the database's alembic_version table."""
    return frozenset(await conn.run_sync(_current_heads))
