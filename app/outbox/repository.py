"""All SQL of the outbox. Enqueueing runs in the caller's transaction; every other statement
is its own short transaction (the worker never holds one while it talks to the network)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.db import table_of
from app.outbox.models import OutboxMessage

_outbox = table_of(OutboxMessage)
_PENDING = (_outbox.c.delivered_at.is_(None), _outbox.c.gave_up_at.is_(None))


@dataclass(frozen=True, slots=True)
class NewMessage:
    kind: str
    idempotency_key: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ClaimedMessage:
    """A message a worker holds until `attempts` changes: its claim counted this attempt."""

    id: int
    kind: str
    payload: dict[str, Any]
    created_at: datetime
    attempts: int


async def enqueue(conn: AsyncConnection, messages: Sequence[NewMessage], *, now: datetime) -> None:
    """Write messages in the caller's transaction: they exist if and only if it commits. A
    key already written is skipped (the message is already on its way or delivered)."""
    if not messages:
        return
    rows = [
        {
            "kind": m.kind,
            "idempotency_key": m.idempotency_key,
            "payload": m.payload,
            "created_at": now,
            "next_attempt_at": now,
            "attempts": 0,
        }
        for m in messages
    ]
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    await conn.execute(
        insert(_outbox).on_conflict_do_nothing(index_elements=["idempotency_key"]), rows
    )


async def has_key(conn: AsyncConnection, idempotency_key: str) -> bool:
    """Whether a message was written under this key (and not yet purged)."""
    found = await conn.scalar(
        select(_outbox.c.id).where(_outbox.c.idempotency_key == idempotency_key).limit(1)
    )
    return found is not None


async def replace_payload(
    conn: AsyncConnection, message: ClaimedMessage, payload: dict[str, Any]
) -> bool:
    """False when another worker has claimed the message since (its lease ran out): the
    caller then leaves it to that one."""
    result = await conn.execute(
        update(_outbox)
        .where(_outbox.c.id == message.id, _outbox.c.attempts == message.attempts)
        .values(payload=payload)
    )
    return bool(result.rowcount == 1)


async def claim_due(
    conn: AsyncConnection, *, now: datetime, lease_until: datetime, limit: int
) -> list[ClaimedMessage]:
    """Take up to `limit` due messages for this worker: one statement, so one short
    transaction. Their `next_attempt_at` moves to `lease_until`, so no other worker takes them
    while this one delivers, and one that died with them lets them go when the lease ends.
    On PostgreSQL rows another worker is claiming are skipped (FOR UPDATE SKIP LOCKED), never
    waited for; SQLite is one writer at a time and ignores the clause."""
    due = (
        select(_outbox.c.id)
        .where(*_PENDING, _outbox.c.next_attempt_at <= now)
        .order_by(_outbox.c.next_attempt_at, _outbox.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = await conn.execute(
        update(_outbox)
        .where(_outbox.c.id.in_(due.scalar_subquery()))
        .values(next_attempt_at=lease_until, attempts=_outbox.c.attempts + 1)
        .returning(
            _outbox.c.id,
            _outbox.c.kind,
            _outbox.c.payload,
            _outbox.c.created_at,
            _outbox.c.attempts,
        )
    )
    return sorted((ClaimedMessage(*row) for row in rows), key=lambda m: m.id)


async def mark_delivered(conn: AsyncConnection, message_id: int, *, now: datetime) -> bool:
    result = await conn.execute(
        update(_outbox)
        .where(_outbox.c.id == message_id, *_PENDING)
        .values(delivered_at=now, last_error=None)
    )
    return bool(result.rowcount)


async def reschedule(
    conn: AsyncConnection, message: ClaimedMessage, *, at: datetime, error: str
) -> bool:
    """Try again at `at`, unless another worker has taken the message since (its lease ended
    while this attempt hung): then that worker's claim stands."""
    result = await conn.execute(
        update(_outbox)
        .where(_outbox.c.id == message.id, _outbox.c.attempts == message.attempts, *_PENDING)
        .values(next_attempt_at=at, last_error=error)
    )
    return bool(result.rowcount)


async def give_up(
    conn: AsyncConnection, message: ClaimedMessage, *, now: datetime, error: str
) -> bool:
    result = await conn.execute(
        update(_outbox)
        .where(_outbox.c.id == message.id, _outbox.c.attempts == message.attempts, *_PENDING)
        .values(gave_up_at=now, last_error=error)
    )
    return bool(result.rowcount)


async def count_pending(conn: AsyncConnection) -> dict[str, int]:
    rows = await conn.execute(
        select(_outbox.c.kind, func.count()).where(*_PENDING).group_by(_outbox.c.kind)
    )
    return {kind: int(count) for kind, count in rows}


async def next_due(conn: AsyncConnection) -> datetime | None:
    """When the earliest pending message is due (a worker sleeps until then at most)."""
    due: datetime | None = (
        await conn.execute(select(func.min(_outbox.c.next_attempt_at)).where(*_PENDING))
    ).scalar_one_or_none()
    return due


async def delete_finished(conn: AsyncConnection, *, before: datetime) -> int:
    """Forget messages delivered or given up before `before` (the audit trail keeps the
    give-ups)."""
    result = await conn.execute(
        delete(_outbox).where(or_(_outbox.c.delivered_at < before, _outbox.c.gave_up_at < before))
    )
    return result.rowcount or 0
