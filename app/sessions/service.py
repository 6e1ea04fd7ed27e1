"""Session lifecycle rules: when a session may be used, and how its idle deadline slides."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.auth.errors import SessionExpired, SessionRevoked
from app.core.db import autocommit_connection
from app.sessions import repository
from app.sessions.cache import SessionStateCache
from app.sessions.errors import SessionNotFound
from app.sessions.repository import SessionState

logger = logging.getLogger("app.sessions")


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    idle_timeout: timedelta
    absolute_lifetime: timedelta
    touch_interval: timedelta

    def new_deadlines(self, now: datetime) -> tuple[datetime, datetime]:
        absolute = now + self.absolute_lifetime
        return min(now + self.idle_timeout, absolute), absolute

    def slid_deadline(self, state: SessionState, now: datetime) -> datetime:
        return min(now + self.idle_timeout, state.absolute_expires_at)

    def ensure_usable(self, state: SessionState | None, now: datetime) -> SessionState:
        if state is None or state.revoked_at is not None or not state.user_active:
            raise SessionRevoked()
        if now >= state.idle_expires_at or now >= state.absolute_expires_at:
            logger.info(
                "session.expired",
                extra={
                    "session_id": str(state.id),
                    "user_id": str(state.user_id),
                    "deadline": "absolute" if now >= state.absolute_expires_at else "idle",
                },
            )
            raise SessionExpired()
        return state


async def load_usable(
    conn: AsyncConnection, policy: SessionPolicy, session_id: uuid.UUID, now: datetime
) -> SessionState:
    return policy.ensure_usable(await repository.get_session_state(conn, session_id), now)


async def load_for_request(
    engine: AsyncEngine,
    policy: SessionPolicy,
    cache: SessionStateCache,
    session_id: uuid.UUID,
    now: datetime,
) -> SessionState:
    """The session named by an access token, if it may still be used: one indexed read, or
    none while a recent read (see SessionStateCache) says it is usable."""
    cached = cache.get(session_id)
    if cached is not None and cached.is_usable_at(now):
        return cached
    async with autocommit_connection(engine) as conn:
        state = await load_usable(conn, policy, session_id, now)
    cache.put(state)
    return state


async def touch(
    engine: AsyncEngine,
    policy: SessionPolicy,
    cache: SessionStateCache,
    state: SessionState,
    now: datetime,
) -> bool:
    """Slide the idle deadline after activity; returns whether the database was written.

    Coalesced: the write happens only when the stored deadline lags the ideal one by at least
    the touch interval, so a busy session costs one UPDATE per interval and the stored deadline
    is never more than one interval behind the truth. The UPDATE repeats that condition, so
    concurrent requests (or replicas) do not each write the same row.
    """
    target = policy.slid_deadline(state, now)
    lag_limit = target - policy.touch_interval
    if state.idle_expires_at > lag_limit or target <= state.idle_expires_at:
        return False
    async with autocommit_connection(engine) as conn:
        written = await repository.slide(
            conn, state.id, now=now, idle_expires_at=target, only_if_before=lag_limit
        )
    # Whether this request or a concurrent one moved it, the stored deadline is now this far.
    cache.put(replace(state, idle_expires_at=target))
    return written


async def list_devices(
    conn: AsyncConnection, user_id: uuid.UUID, *, now: datetime
) -> list[repository.DeviceSession]:
    return await repository.list_live_sessions(conn, user_id, now=now)


async def revoke_device(
    conn: AsyncConnection, user_id: uuid.UUID, session_id: uuid.UUID, *, now: datetime
) -> None:
    """Revoke one of the user's own sessions; anyone else's is reported as not found."""
    state = await repository.get_session_state(conn, session_id)
    if state is None or state.user_id != user_id or state.revoked_at is not None:
        raise SessionNotFound()
    await repository.revoke_sessions(conn, now=now, reason="revoked_by_user", session_id=session_id)
