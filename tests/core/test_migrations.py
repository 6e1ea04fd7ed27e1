"""Migrations build, from empty, exactly the schema the models declare, on both engines, and
install exactly the PostgreSQL functions of app/sessions/sql/ (through their pinned copies in
migrations/sql/)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from app.core.db import create_engine
from app.models import Base
from app.sessions import repository as sessions
from app.users import repository as users


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_migrated_schema_matches_models(database_url: str) -> None:
    # database_url was migrated from an empty database by the fixture.
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            tables = await conn.run_sync(_tables)
    finally:
        await engine.dispose()
    assert {"users", "sessions", "refresh_tokens", "audit_events", "signing_keys"} <= tables
    await asyncio.sleep(0)


ROOT = Path(__file__).resolve().parents[2]
APP_SQL = ROOT / "app" / "sessions" / "sql"
PINNED_SQL = ROOT / "migrations" / "sql"
# app/sessions/sql/<stem>.sql -> the function it creates
FUNCTIONS = {
    "rotate_refresh": "authsvc_rotate_refresh",
    "rotate_refresh_many": "authsvc_rotate_refresh_many",
    "start_session": "authsvc_start_session",
}


def test_every_app_sql_file_is_checked() -> None:
    assert {p.stem for p in APP_SQL.glob("*.sql")} == set(FUNCTIONS)


@pytest.mark.parametrize("stem", sorted(FUNCTIONS))
def test_newest_pinned_copy_is_the_app_sql(stem: str) -> None:
    pinned = sorted(PINNED_SQL.glob(f"[0-9][0-9][0-9][0-9]_{stem}.sql"))
    assert pinned, f"no pinned copy migrations/sql/NNNN_{stem}.sql"
    newest = pinned[-1]
    revision = newest.name.split("_", 1)[0]
    migrations = [
        m
        for m in (ROOT / "migrations" / "versions").glob(f"{revision}_*.py")
        if newest.name in m.read_text(encoding="utf-8")
    ]
    assert migrations, f"no migration {revision}_*.py installs migrations/sql/{newest.name}"
    assert newest.read_bytes() == (APP_SQL / f"{stem}.sql").read_bytes(), (
        f"app/sessions/sql/{stem}.sql differs from its newest pinned copy "
        f"migrations/sql/{newest.name}: add a migration that pins the new version "
        "(a new migrations/sql/NNNN_" + stem + ".sql); never edit a pinned copy"
    )


async def _functiondef(conn: Any, schema: str, function: str) -> str:
    rows = await conn.fetch(
        "SELECT pg_get_functiondef(p.oid) AS def FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = $1 AND p.proname = $2",
        schema,
        function,
    )
    assert len(rows) == 1, f"{len(rows)} functions {schema}.{function}, expected one"
    definition: str = rows[0]["def"]
    return definition


@pytest.mark.parametrize(("stem", "function"), sorted(FUNCTIONS.items()))
async def test_migrated_function_is_the_app_sql(
    postgres_url: str, stem: str, function: str
) -> None:
    """PostgreSQL's own rendering of the migrated function equals that of the app's file,
    created afresh in a scratch schema: body, signature and attributes, comments included."""
    conn = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    schema = f"tmp_fn_{uuid.uuid4().hex[:12]}"
    try:
        installed = await _functiondef(conn, "public", function)
        await conn.execute(f"CREATE SCHEMA {schema}")
        try:
            await conn.execute(f"SET search_path TO {schema}, public")
            await conn.execute((APP_SQL / f"{stem}.sql").read_text(encoding="utf-8"))
            expected = await _functiondef(conn, schema, function)
        finally:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()
    qualified = f"FUNCTION {schema}.{function}("
    assert qualified in expected
    expected = expected.replace(qualified, f"FUNCTION public.{function}(", 1)
    assert installed == expected, (
        f"the migrations install a different {function} than app/sessions/sql/{stem}.sql: "
        "add a migration that pins the new version"
    )


async def test_previous_versions_rotation_call_keeps_its_rules(postgres_url: str) -> None:
    """During a rolling upgrade, replicas of the previous version still call
    authsvc_rotate_refresh with the ten arguments of migration 0004. After 0007 that call
    resolves (the new parameters have defaults) and keeps the rules those replicas know: no
    `superseded` (an ancestor inside the reuse interval is theft, as before), no limit flag."""
    now = datetime.now(UTC)
    engine = create_engine(postgres_url)
    try:
        async with engine.begin() as conn:
            user_id = await users.insert_user(
                conn,
                email=f"legacy-{uuid.uuid4().hex[:8]}@example.com",
                password_hash="$dummy$",
                role="user",
                now=now - timedelta(hours=1),
            )
            session_id = uuid.uuid4()
            await sessions.insert_session(
                conn,
                session_id=session_id,
                user_id=user_id,
                device_name=None,
                user_agent=None,
                ip=None,
                now=now - timedelta(hours=1),
                idle_expires_at=now + timedelta(hours=1),
                absolute_expires_at=now + timedelta(hours=8),
            )
            hashes = [uuid.uuid4().bytes * 2 for _ in range(3)]
            parent = None
            for generation, token_hash in enumerate(hashes, start=1):
                parent = await sessions.insert_refresh_token(
                    conn,
                    session_id=session_id,
                    token_hash=token_hash,
                    parent_id=parent,
                    generation=generation,
                    now=now - timedelta(seconds=30),
                )
                if generation < 3:  # R1 used 20 s ago, R2 10 s ago, R3 the newest
                    used = now - timedelta(seconds=30 - 10 * generation)
                    await sessions.claim_token(conn, parent, now=used)
    finally:
        await engine.dispose()

    conn = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:

        async def previous_call(token_hash: bytes) -> tuple[str, str | None]:
            row = await conn.fetchrow(
                "SELECT * FROM authsvc_rotate_refresh($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                session_id,
                token_hash,
                uuid.uuid4(),
                uuid.uuid4().bytes * 2,
                now,
                3600.0,
                5.0,
                30.0,
                None,
                None,
            )
            return row["outcome"], row["reuse_class"]

        assert await previous_call(hashes[2]) == ("rotated", None)
        assert await previous_call(hashes[0]) == ("reused", "ancestor_replay")
    finally:
        await conn.close()
