"""All SQL touching the audit_events table."""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from app.audit.models import AuditEvent
from app.core.db import table_of


async def insert_event(conn: AsyncConnection, values: dict[str, object]) -> None:
    await conn.execute(insert(table_of(AuditEvent)).values(**values))
