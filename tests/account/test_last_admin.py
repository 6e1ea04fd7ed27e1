"""The last active admin (issue 15): the admin API never deactivates it, not even when two
admins deactivate each other at the same moment; the operator's CLI may, with a warning.

Each test has a database of its own: the rule is about every admin in the users table."""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import func, select

from app.core.db import table_of
from app.users.models import User
from tests.conftest import Harness, bearer, error_code, make_settings, start_harness
from tests.support.cli import cli
from tests.support.databases import fresh_database

KINDS = ["sqlite", "postgres"]


async def _user_id(h: Harness, email: str) -> uuid.UUID:
    users = table_of(User)
    async with h.ctx.engine.connect() as conn:
        value = (await conn.execute(select(users.c.id).where(users.c.email == email))).scalar_one()
    assert isinstance(value, uuid.UUID)
    return value


async def _active_admins(h: Harness) -> int:
    users = table_of(User)
    query = select(func.count()).where(users.c.role == "admin", users.c.is_active.is_(True))
    async with h.ctx.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def _deactivate(h: Harness, admin: dict[str, Any], user_id: uuid.UUID) -> httpx.Response:
    return await h.client.post(
        f"/admin/users/{user_id}/deactivate", headers=bearer(admin["access_token"])
    )


@pytest.mark.parametrize("kind", KINDS)
async def test_the_last_active_admin_is_never_deactivated(kind: str, tmp_path: Path) -> None:
    async with fresh_database(kind, tmp_path) as url:
        async for h in start_harness(make_settings(url)):
            first_email = await h.create_user(role="admin")
            first = await h.login(first_email)
            first_id = await _user_id(h, first_email)
            alone = await _deactivate(h, first, first_id)
            assert alone.status_code == 409
            assert error_code(alone) == "last_admin"
            # A plain user is deactivated whatever the number of admins.
            plain_id = await _user_id(h, await h.create_user())
            assert (await _deactivate(h, first, plain_id)).status_code == 200

            second_email = await h.create_user(role="admin")
            second_id = await _user_id(h, second_email)
            assert (await _deactivate(h, first, second_id)).status_code == 200
            assert error_code(await _deactivate(h, first, first_id)) == "last_admin"
            # An admin already inactive may be deactivated again: nothing changes.
            assert (await _deactivate(h, first, second_id)).status_code == 200
            await h.set_active(second_email, active=True)
            # Two admins: either may go, itself included, and then the other is the last.
            assert (await _deactivate(h, first, first_id)).status_code == 200
            second = await h.login(second_email)
            assert error_code(await _deactivate(h, second, second_id)) == "last_admin"
            assert await _active_admins(h) == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_admins_deactivating_each_other_at_once_leave_one(kind: str, tmp_path: Path) -> None:
    """On PostgreSQL both requests are held at the users table (a third connection has locked
    both admins' rows) until each has reached it, then let go together: a check that read
    the admins without locking them would let both through and leave none."""
    async with fresh_database(kind, tmp_path) as url:
        # The first request waits at the lock until the second gets there: under a loaded CI
        # that took longer than the default bound's statement_timeout (1.75 s), and a 503.
        async for h in start_harness(make_settings(url, db_pool_timeout=30)):
            emails = [await h.create_user(role="admin") for _ in range(2)]
            admins = [await h.login(email) for email in emails]
            ids = [await _user_id(h, email) for email in emails]
            requests = [
                partial(_deactivate, h, admins[0], ids[1]),
                partial(_deactivate, h, admins[1], ids[0]),
            ]
            if kind == "postgres":
                responses = await _released_together(url, ids, requests)
            else:  # one writer: the transactions are serialised anyway
                responses = await asyncio.gather(*(request() for request in requests))
            assert sorted(r.status_code for r in responses) == [200, 409]
            assert await _active_admins(h) == 1


async def _released_together(url: str, ids: list[uuid.UUID], requests: list[Any]) -> list[Any]:
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    holder, watcher = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        held = holder.transaction()
        await held.start()
        # FOR SHARE: it holds back a FOR UPDATE and an UPDATE of the rows alike.
        await holder.execute("SELECT id FROM users WHERE id = ANY($1::uuid[]) FOR SHARE", ids)
        tasks = [asyncio.create_task(request()) for request in requests]
        # Watched from outside the holder's transaction, which keeps one snapshot of the
        # statistics for its whole length.
        await _wait_for_lock_waiters(watcher, len(tasks))
        await held.rollback()
        return list(await asyncio.gather(*tasks))
    finally:
        await holder.close()
        await watcher.close()


async def _wait_for_lock_waiters(conn: asyncpg.Connection, count: int) -> None:
    query = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + 10
    while await conn.fetchval(query) < count:
        assert time.monotonic() < deadline, "the requests never reached the users' rows"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("kind", KINDS)
async def test_the_operator_may_deactivate_the_last_admin_with_a_warning(
    kind: str, tmp_path: Path
) -> None:
    async with fresh_database(kind, tmp_path) as url:
        email = "operator-admin@example.com"
        created = await cli(url, "users", "create", email, "--role", "admin", stdin="a password\n")
        assert created.returncode == 0, created.stderr
        deactivated = await cli(url, "users", "deactivate", email)
        assert deactivated.returncode == 0, deactivated.stderr
        assert "user deactivated" in deactivated.stdout
        assert "warning: no active admin remains" in deactivated.stderr
        assert "users create EMAIL --role admin" in deactivated.stderr
        # Back to one admin: nothing to warn about.
        activated = await cli(url, "users", "activate", email)
        assert activated.returncode == 0
        assert "warning" not in activated.stderr
