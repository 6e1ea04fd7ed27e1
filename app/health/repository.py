"""Readiness queries: is the database reachable, and which schema does it hold."""

from __future__ import annotations

import functools

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.migrate import alembic_config
from app.health.models import SchemaCompatibility


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(""))


@functools.cache
def expected_revisions() -> frozenset[str]:
    """The head revision(s) of the migrations shipped with this code (read once per process)."""
    return frozenset(_script().get_heads())


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision shipped with this code: a database at any other one was migrated by a
    newer release."""
    return frozenset(script.revision for script in _script().walk_revisions())


def _current_heads(connection: Connection) -> tuple[str, ...]:
    # Alembic's own reader: an empty tuple, not an error, when alembic_version does not exist.
    return MigrationContext.configure(connection).get_current_heads()


async def database_revisions(conn: AsyncConnection) -> frozenset[str]:
    """The revision(s) recorded in the database's alembic_version table."""
    return frozenset(await conn.run_sync(_current_heads))


def _has_compatibility_table(connection: Connection) -> bool:
    return inspect(connection).has_table(SchemaCompatibility.__tablename__)


async def oldest_code_revision(conn: AsyncConnection) -> str | None:
    """The head of the oldest release the schema still serves (migration 0016 on), or None
    for a schema that does not say."""
    if not await conn.run_sync(_has_compatibility_table):
        return None
    stmt = select(SchemaCompatibility.oldest_code_revision)
    return (await conn.execute(stmt)).scalar_one_or_none()
