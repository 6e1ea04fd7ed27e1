"""All SQL of a refresh rotation: one round trip on PostgreSQL, the same rules portably elsewhere.

On PostgreSQL the whole rotation is the function `authsvc_rotate_refresh` (migration 0004),
called once on the driver connection outside any transaction, so the call is its own
transaction: no BEGIN, no COMMIT, one round trip. On SQLite (the embedded default, one writer
at a time) `_rotate_portable` applies the same rules with SQLAlchemy Core in one transaction.
Neither raises for a rule: they report an outcome and the service decides what the client sees.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.audit import repository as audit
from app.core.db import autocommit_connection, driver_connection, on_asyncpg
from app.sessions import repository
from app.sessions.repository import SessionState, TokenLink
from app.sessions.service import SessionPolicy

Outcome = Literal["invalid", "unusable", "rotated", "retried", "reused"]


@dataclass(frozen=True, slots=True)
class RotationRequest:
    session_id: uuid.UUID  # as the token names it; checked against the token's stored row
    token_hash: bytes
    successor_id: uuid.UUID
    successor_hash: bytes
    now: datetime
    policy: SessionPolicy  # the idle timeout and touch interval of the slide
    reuse_interval: timedelta
    ip: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class Rotation:
    """What happened. `session` is set for every outcome but "invalid"; after "rotated" and
    "retried" it carries the slid idle deadline, after "reused" the revocation."""

    outcome: Outcome
    session: SessionState | None = None
    generation: int | None = None  # of the successor ("rotated") or of the replayed token
    reuse_class: str | None = None


async def rotate(engine: AsyncEngine, request: RotationRequest) -> Rotation:
    if on_asyncpg(engine):
        return await _rotate_postgres(engine, request)
    async with autocommit_connection(engine) as conn:
        return await _rotate_portable(conn, request)


_CALL = "SELECT * FROM authsvc_rotate_refresh($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"


async def _rotate_postgres(engine: AsyncEngine, r: RotationRequest) -> Rotation:
    async with driver_connection(engine) as conn:
        row = await conn.fetchrow(
            _CALL,
            r.session_id,
            r.token_hash,
            r.successor_id,
            r.successor_hash,
            r.now,
            r.policy.idle_timeout.total_seconds(),
            r.policy.touch_interval.total_seconds(),
            r.reuse_interval.total_seconds(),
            r.ip,
            r.user_agent,
        )
    outcome: Outcome = row["outcome"]
    if outcome == "invalid":
        return Rotation(outcome)
    return Rotation(
        outcome,
        session=_session_from_row(r.session_id, row),
        generation=row["generation"],
        reuse_class=row["reuse_class"],
    )


def _session_from_row(session_id: uuid.UUID, row: Any) -> SessionState:
    return SessionState(
        id=session_id,
        user_id=uuid.UUID(bytes=row["user_id"].bytes),
        email=row["email"],
        role=row["role"],
        user_active=row["user_active"],
        created_at=row["created_at"],
        idle_expires_at=row["idle_expires_at"],
        absolute_expires_at=row["absolute_expires_at"],
        revoked_at=row["revoked_at"],
    )


async def _rotate_portable(conn: AsyncConnection, r: RotationRequest) -> Rotation:
    # A token of another session is refused before anything is locked.
    if await repository.session_of_token(conn, r.token_hash) != r.session_id:
        return Rotation("invalid")
    if not await repository.lock_session(conn, r.session_id):
        return Rotation("invalid")
    link = await repository.find_token_link(conn, r.token_hash)
    if link is None or link.session.id != r.session_id:
        return Rotation("invalid")
    state = link.session
    if not state.is_usable_at(r.now):
        return Rotation("unusable", session=state, generation=link.generation)
    if link.used_at is None:
        if not await _claim(conn, link, r):  # pragma: no cover - impossible under the lock
            return Rotation("invalid")
        outcome: Outcome = "rotated"
        generation, reuse_class = link.generation + 1, None
        event, details = "refresh.rotated", dict[str, object](generation=generation)
    elif _is_retry(link, link.used_at, r):
        outcome, generation, reuse_class = "retried", link.generation, "retry_inside_interval"
        event, details = "refresh.retried", {"reuse_class": reuse_class}
    else:
        return await _revoke_for_reuse(conn, link, r)
    state = await _slide(conn, state, r)
    await _insert_audit(conn, r, event, state.user_id, details)
    return Rotation(outcome, state, generation, reuse_class)


async def _claim(conn: AsyncConnection, link: TokenLink, r: RotationRequest) -> bool:
    if not await repository.claim_token(conn, link.id, now=r.now):
        return False
    await repository.insert_refresh_token(
        conn,
        token_id=r.successor_id,
        session_id=r.session_id,
        token_hash=r.successor_hash,
        parent_id=link.id,
        generation=link.generation + 1,
        now=r.now,
    )
    return True


def _is_retry(link: TokenLink, used_at: datetime, r: RotationRequest) -> bool:
    """The newest used token, presented again within the reuse interval: a retry or a race."""
    return link.is_newest_parent and r.now - used_at <= r.reuse_interval


async def _revoke_for_reuse(conn: AsyncConnection, link: TokenLink, r: RotationRequest) -> Rotation:
    reuse_class = "stale_replay" if link.is_newest_parent else "ancestor_replay"
    await repository.revoke_sessions(
        conn, now=r.now, reason="refresh_token_reused", session_id=r.session_id
    )
    details = {"reuse_class": reuse_class, "generation": link.generation}
    await _insert_audit(conn, r, "refresh.reuse_detected", link.session.user_id, details)
    return Rotation("reused", replace(link.session, revoked_at=r.now), link.generation, reuse_class)


async def _slide(conn: AsyncConnection, state: SessionState, r: RotationRequest) -> SessionState:
    target = r.policy.slid_deadline(state, r.now)
    if target <= state.idle_expires_at:
        return state
    await repository.slide(
        conn,
        state.id,
        now=r.now,
        idle_expires_at=target,
        only_if_before=target - r.policy.touch_interval,
    )
    return replace(state, idle_expires_at=target)


async def _insert_audit(
    conn: AsyncConnection,
    r: RotationRequest,
    event: str,
    user_id: uuid.UUID,
    details: Mapping[str, object],
) -> None:
    await audit.insert_event(
        conn,
        {
            "event": event,
            "user_id": user_id,
            "session_id": r.session_id,
            "ip": r.ip,
            "user_agent": r.user_agent,
            "details": dict(details),
            "created_at": r.now,
        },
    )
