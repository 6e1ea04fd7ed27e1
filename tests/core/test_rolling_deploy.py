"""A rolling deploy's schema rules (expand/contract, docs/deploy.md "Rolling deploys"):
replicas of the previous release stay ready on a schema a newer release expanded, refuse one it
contracted past them, and replicas that start together migrate once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from app.core import migrate
from app.core.db import create_engine
from app.health import repository as health
from tests.conftest import _create_pg_database, _drop_pg_database, bearer
from tests.core.test_outage import harness_on
from tests.support.cli import cli

# What a newer release's migrations would leave: a revision this code does not know (written
# into the statements below as a literal), after an expand step (a nullable column the old
# code never reads).
NEWER = "0099"


@pytest.fixture(params=["sqlite", "postgres"])
async def scratch_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_url: str
) -> AsyncIterator[str]:
    """An empty database of its own: these tests rewrite alembic_version."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/rolling.db"
        return
    url = await _create_pg_database()
    assert url is not None
    try:
        yield url
    finally:
        await _drop_pg_database(url)


async def _execute(url: str, *statements: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(text(statement))
    finally:
        await engine.dispose()


async def _revision(url: str) -> frozenset[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await health.database_revisions(conn)
    finally:
        await engine.dispose()


async def _newer_release_expands(url: str) -> None:
    await _execute(
        url,
        "ALTER TABLE sessions ADD COLUMN newer_release_note VARCHAR(40)",
        "UPDATE alembic_version SET version_num = '0099'",
    )


async def test_the_previous_release_serves_a_schema_a_newer_one_expanded(scratch_url: str) -> None:
    await asyncio.to_thread(migrate.upgrade, scratch_url)
    async with harness_on(scratch_url) as h:
        email = await h.create_user()
        tokens = await h.login(email)
        await _newer_release_expands(scratch_url)

        ready = await h.client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["migrations"] == "newer"
        rotated = await h.refresh(tokens["refresh_token"])
        assert rotated.status_code == 200, rotated.text
        me = await h.client.get("/auth/me", headers=bearer(rotated.json()["access_token"]))
        assert me.status_code == 200, me.text
        await h.login(email)

    # A replica of this release restarting mid-rollout (or a rollback) starts: its migrate
    # step leaves the newer schema alone instead of failing on a revision it cannot locate.
    started = await cli(scratch_url, "migrate")
    assert started.returncode == 0, started.stderr
    assert "newer schema that still serves this release" in started.stdout
    assert await _revision(scratch_url) == {NEWER}


async def test_the_previous_release_refuses_a_schema_a_newer_one_contracted(
    scratch_url: str,
) -> None:
    await asyncio.to_thread(migrate.upgrade, scratch_url)
    async with harness_on(scratch_url) as h:
        await _newer_release_expands(scratch_url)
        # The newer release's contract step: code before it no longer works on the schema.
        await _execute(scratch_url, "UPDATE schema_compatibility SET oldest_code_revision = '0099'")
        refused = await h.client.get("/readyz")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "service_unavailable"
        assert "newer release that no longer serves this one" in refused.json()["error"]["message"]
        assert (await h.client.get("/healthz")).status_code == 200

    start = await cli(scratch_url, "migrate")
    assert start.returncode == 1
    assert "Deploy a newer release" in start.stderr
    assert "Traceback" not in start.stderr
    assert await _revision(scratch_url) == {NEWER}


async def test_a_schema_from_before_the_compatibility_record_counts_as_incompatible(
    scratch_url: str,
) -> None:
    """A database at a revision this code does not know and with no record of what it serves
    (another application's, or a newer release that dropped the record) is not guessed at."""
    await asyncio.to_thread(migrate.upgrade, scratch_url)
    await _execute(
        scratch_url,
        "DROP TABLE schema_compatibility",
        "UPDATE alembic_version SET version_num = '0099'",
    )
    async with harness_on(scratch_url) as h:
        assert (await h.client.get("/readyz")).status_code == 503
    start = await cli(scratch_url, "migrate")
    assert start.returncode == 1
    assert "(not recorded)" in start.stderr


async def test_replicas_starting_together_migrate_once(scratch_url: str) -> None:
    """Four `migrate` runs (what four replicas' `serve` does first) on an empty database at
    once: all succeed, the schema is at head, one signing key. Without the locks one of four
    died: on a duplicate key (PostgreSQL, without the advisory lock) or a duplicate column
    (SQLite, without the file lock: its driver runs DDL outside a transaction)."""
    runs = await asyncio.gather(*(cli(scratch_url, "migrate") for _ in range(4)))
    assert [run.returncode for run in runs] == [0] * 4, [run.stderr[-500:] for run in runs]
    assert await _revision(scratch_url) == health.expected_revisions()
    engine = create_engine(scratch_url)
    try:
        async with engine.connect() as conn:
            keys = (await conn.execute(text("SELECT count(*) FROM signing_keys"))).scalar_one()
    finally:
        await engine.dispose()
    assert keys == 1
