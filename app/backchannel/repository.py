"""What a session's end writes to the outbox: one message per (session, client), in the
revoking transaction. (The theft revocation inside `authsvc_rotate_refresh` on PostgreSQL
writes the same rows in SQL: app/sessions/sql/rotate_refresh.sql.)"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from app.outbox import repository as outbox
from app.outbox.repository import NewMessage

KIND = "backchannel_logout"


def idempotency_key(session_id: uuid.UUID | str, client_id: str) -> str:
    return f"{KIND}:{session_id}:{client_id}"


async def enqueue_logouts(
    conn: AsyncConnection,
    ended: Sequence[tuple[uuid.UUID, uuid.UUID]],
    client_ids: Sequence[str],
    *,
    now: datetime,
) -> None:
    """`ended`: (session id, user id) of each session that just ended. The token itself is
    signed at send time (a notification delayed by an outage must not carry an expired one)."""
    await outbox.enqueue(
        conn,
        [
            NewMessage(
                kind=KIND,
                idempotency_key=idempotency_key(session_id, client_id),
                payload={"sid": str(session_id), "sub": str(user_id), "client_id": client_id},
            )
            for session_id, user_id in ended
            for client_id in client_ids
        ],
        now=now,
    )
