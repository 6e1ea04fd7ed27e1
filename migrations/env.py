"""Alembic environment: async engine, URL from the application settings (or -x / attributes)."""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url

from app.core.db import create_engine
from app.core.settings import get_settings
from app.models import Base

target_metadata = Base.metadata
# An arbitrary constant naming "schema migration" among PostgreSQL advisory locks.
_MIGRATION_LOCK = 0x6D696772  # "migr"


def _target() -> tuple[str, bool]:
    """(URL, whether it is a transaction-mode pooler): as app.core.migrate passed them, or
    from the settings (PostgreSQL itself when DATABASE_DIRECT_URL names it)."""
    url = context.config.attributes.get("database_url")
    if url:
        return str(url), bool(context.config.attributes.get("transaction_pooled"))
    settings = get_settings()
    direct = settings.direct_database_url
    return direct or settings.database_url, direct is None


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Replicas that start together all migrate: the first takes the lock, the others
            # wait for its commit and then find the schema at head. Without it one of four
            # concurrent `migrate` runs died on a duplicate key (alembic_version's row type).
            # A transaction lock: pooler-safe.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        context.run_migrations()


@contextmanager
def _sqlite_file_lock(url: str) -> Iterator[None]:
    """Replicas of one SQLite database share its host: an exclusive lock on a file beside it
    serialises their migrations. SQLite's own lock does not: the driver runs DDL outside a
    transaction, so two runs both found the schema empty and one died on a duplicate column."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        yield
        return
    with Path(f"{database}.migrate-lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


async def _run_async() -> None:
    url, transaction_pooled = _target()
    engine = create_engine(url, transaction_pooled=transaction_pooled)
    with _sqlite_file_lock(url):
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(url=_target()[0], target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(_run_async())
