"""PostgreSQL's store: the hot paths (rotation, a login's session start and its first read) are
one call each on the pooled connection's own asyncpg driver, outside any transaction, so each
call is its own transaction and one round trip. SQLAlchemy's execution path costs more CPU
than these statements (docs/performance.md). Everything else is the portable store's.

The functions are app/sessions/sql/*.sql, installed by migration 0013 (0004, 0005, 0007,
0009 and 0010 installed the earlier versions).
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.db import driver_connection
from app.sessions.policy import SessionState
from app.sessions.store.base import Outcome, Rotation, RotationRequest, SessionStart, StartedFor
from app.sessions.store.portable import PortableSessionStore
from app.users import repository as users
from app.users.repository import UserRecord

_ROTATE = (
    "SELECT * FROM authsvc_rotate_refresh"
    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
)
_START = "SELECT * FROM authsvc_start_session($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"


class PostgresSessionStore(PortableSessionStore):
    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        # The same Core statement as the portable read, compiled once for this driver.
        self._by_email = str(
            users.BY_EMAIL.compile(dialect=PGDialect_asyncpg())  # type: ignore[no-untyped-call]
        )

    async def rotate(self, request: RotationRequest) -> Rotation:
        r = request
        async with driver_connection(self._engine) as conn:
            row = await conn.fetchrow(
                _ROTATE,
                r.session_id,
                r.token_hash,
                r.successor_id,
                r.successor_hash,
                r.now,
                r.policy.idle_timeout.total_seconds(),
                r.policy.touch_interval.total_seconds(),
                r.policy.reuse_interval.total_seconds(),
                r.ip,
                r.user_agent,
                r.arrived_at,
                r.may_rotate,
                list(r.logout_clients),
                r.dpop_jkt,
            )
        outcome: Outcome = row["outcome"]
        if outcome in ("invalid", "dpop_mismatch"):
            return Rotation(outcome)
        return Rotation(
            outcome,
            session=_session_from_row(r.session_id, row),
            generation=row["generation"],
            reuse_class=row["reuse_class"],
        )

    async def start(self, start: SessionStart) -> StartedFor | None:
        s = start
        async with driver_connection(self._engine) as conn:
            row = await conn.fetchrow(
                _START,
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
                s.dpop_jkt,
            )
        if not row["started"]:
            return None
        return StartedFor(email=row["email"], role=row["role"])

    async def find_login_candidate(self, email: str) -> UserRecord | None:
        async with driver_connection(self._engine) as conn:
            row = await conn.fetchrow(self._by_email, email)
        if row is None:
            return None
        user_id, *rest = row
        return UserRecord(_uuid(user_id), *rest)


def _uuid(value: Any) -> uuid.UUID:
    # asyncpg returns its own UUID type; the rest of the code compares stdlib UUIDs.
    return uuid.UUID(bytes=value.bytes)


def _session_from_row(session_id: uuid.UUID, row: Any) -> SessionState:
    return SessionState(
        id=session_id,
        user_id=_uuid(row["user_id"]),
        email=row["email"],
        role=row["role"],
        user_active=row["user_active"],
        created_at=row["created_at"],
        idle_expires_at=row["idle_expires_at"],
        absolute_expires_at=row["absolute_expires_at"],
        revoked_at=row["revoked_at"],
    )
