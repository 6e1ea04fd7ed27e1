"""All SQL touching the audit_events table."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.audit.models import AuditEvent
from app.core.db import table_of

_events = table_of(AuditEvent)


async def insert_event(conn: AsyncConnection, values: dict[str, object]) -> None:
    await conn.execute(insert(_events).values(**values))


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    event: str
    user_id: uuid.UUID | None
    session_id: uuid.UUID | None
    ip: str | None
    user_agent: str | None
    details: dict[str, Any]
    created_at: datetime


async def query_events(
    conn: AsyncConnection,
    *,
    user_id: uuid.UUID | None = None,
    session_id: uuid.UUID | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[AuditRow]:
    """Newest first; every filter is index-backed (user/session with created_at)."""
    t = _events
    stmt = select(
        t.c.id,
        t.c.event,
        t.c.user_id,
        t.c.session_id,
        t.c.ip,
        t.c.user_agent,
        t.c.details,
        t.c.created_at,
    )
    if user_id is not None:
        stmt = stmt.where(t.c.user_id == user_id)
    if session_id is not None:
        stmt = stmt.where(t.c.session_id == session_id)
    if since is not None:
        stmt = stmt.where(t.c.created_at >= since)
    rows = await conn.execute(stmt.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit))
    return [AuditRow(*row) for row in rows]


async def count_session_events(conn: AsyncConnection, event: str, session_id: uuid.UUID) -> int:
    """How often `event` happened in one session (index-backed: session, then created_at)."""
    t = _events
    stmt = select(func.count()).where(t.c.session_id == session_id, t.c.event == event)
    return int((await conn.execute(stmt)).scalar_one())
