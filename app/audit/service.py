"""Audit trail: every security event goes to the database and to the structured log."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from app.audit import repository
from app.core.client import ClientInfo
from app.core.metrics import AUTH_EVENTS, REUSE_DETECTIONS

logger = logging.getLogger("app.audit")


async def record(
    conn: AsyncConnection,
    event: str,
    *,
    now: datetime,
    client: ClientInfo,
    user_id: uuid.UUID | None = None,
    session_id: uuid.UUID | None = None,
    **details: Any,
) -> None:
    await repository.insert_event(
        conn,
        {
            "event": event,
            "user_id": user_id,
            "session_id": session_id,
            "ip": client.ip,
            "user_agent": client.stored_user_agent,
            "details": details,
            "created_at": now,
        },
    )
    announce(event, client=client, user_id=user_id, session_id=session_id, **details)


async def count_in_session(conn: AsyncConnection, event: str, session_id: uuid.UUID) -> int:
    return await repository.count_session_events(conn, event, session_id)


def announce(
    event: str,
    *,
    client: ClientInfo,
    user_id: uuid.UUID | None = None,
    session_id: uuid.UUID | None = None,
    **details: Any,
) -> None:
    """The log line and metrics of an event whose row is already written (by `record`, or by
    the one-round-trip rotation, which writes its audit row itself)."""
    AUTH_EVENTS.labels(event).inc()
    if event == "refresh.reuse_detected":
        REUSE_DETECTIONS.labels(str(details.get("reuse_class"))).inc()
    logger.info(
        event,
        extra={
            "user_id": str(user_id) if user_id else None,
            "session_id": str(session_id) if session_id else None,
            "client_ip": client.ip,
            **details,
        },
    )
