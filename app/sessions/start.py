"""Starting a session once the password matched, in one round trip (PostgreSQL only).

The function `authsvc_start_session` (migration 0005) re-reads the user under a row lock,
starts the session only if nothing changed while the hash ran (same password hash, still
active, not locked), and writes the session, its first refresh token and the audit row, all
in the implicit transaction of one call. When it starts nothing it writes nothing, and the
service's general path (one statement at a time, also SQLite's) decides and records why.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.db import driver_connection


@dataclass(frozen=True, slots=True)
class SessionStart:
    user_id: uuid.UUID
    password_hash: str  # as read before the hash ran: a change since then starts nothing
    session_id: uuid.UUID
    token_id: uuid.UUID
    token_hash: bytes
    now: datetime
    idle_expires_at: datetime
    absolute_expires_at: datetime
    device_name: str | None
    user_agent: str | None
    ip: str | None


@dataclass(frozen=True, slots=True)
class StartedFor:
    """The user as the locked read saw it."""

    email: str
    role: str


_CALL = "SELECT * FROM authsvc_start_session($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"


async def start_session(engine: AsyncEngine, s: SessionStart) -> StartedFor | None:
    """The started session's user, or None when the user changed meanwhile (nothing written)."""
    async with driver_connection(engine) as conn:
        row = await conn.fetchrow(
            _CALL,
            s.user_id,
            s.password_hash,
            s.now,
            s.session_id,
            s.idle_expires_at,
            s.absolute_expires_at,
            s.device_name,
            s.user_agent,
            s.ip,
            s.token_id,
            s.token_hash,
        )
    if not row["started"]:
        return None
    return StartedFor(email=row["email"], role=row["role"])
