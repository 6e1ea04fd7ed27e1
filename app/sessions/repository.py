"""All SQL touching sessions and refresh tokens. Core statements, one round trip each."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import aliased

from app.backchannel import repository as backchannel
from app.core.db import table_of
from app.sessions.models import RefreshToken, Session
from app.sessions.policy import AuthContext, SessionState, TokenLink
from app.sessions.push import CHANNEL, payload_for
from app.users.models import User

_sessions = table_of(Session)
_tokens = table_of(RefreshToken)
_users = table_of(User)


_SESSION_COLUMNS = (
    _sessions.c.id,
    _sessions.c.user_id,
    _users.c.email,
    _users.c.role,
    _users.c.is_active,
    _sessions.c.created_at,
    _sessions.c.idle_expires_at,
    _sessions.c.absolute_expires_at,
    _sessions.c.revoked_at,
    _sessions.c.amr,
    _sessions.c.auth_time,
    _sessions.c.factor_at,
)
_SESSION_JOIN = _sessions.join(_users, _users.c.id == _sessions.c.user_id)


async def get_session_state(conn: AsyncConnection, session_id: uuid.UUID) -> SessionState | None:
    row = (
        await conn.execute(
            select(*_SESSION_COLUMNS).select_from(_SESSION_JOIN).where(_sessions.c.id == session_id)
        )
    ).first()
    return SessionState(*row) if row else None


async def insert_session(
    conn: AsyncConnection,
    *,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    device_name: str | None,
    user_agent: str | None,
    ip: str | None,
    now: datetime,
    idle_expires_at: datetime,
    absolute_expires_at: datetime,
    dpop_jkt: str | None = None,
    context: AuthContext | None = None,
) -> None:
    await conn.execute(
        insert(_sessions).values(
            id=session_id,
            user_id=user_id,
            device_name=device_name,
            user_agent=user_agent,
            ip=ip,
            created_at=now,
            last_seen_at=now,
            idle_expires_at=idle_expires_at,
            absolute_expires_at=absolute_expires_at,
            dpop_jkt=dpop_jkt,
            amr=context.amr if context else None,
            auth_time=context.auth_time if context else None,
            factor_at=context.factor_at if context else None,
        )
    )


async def slide(
    conn: AsyncConnection,
    session_id: uuid.UUID,
    *,
    now: datetime,
    idle_expires_at: datetime,
    only_if_before: datetime | None = None,
) -> bool:
    """Move the idle deadline forward. With `only_if_before`, write only when the stored
    deadline lags behind it, so concurrent requests do not each write the same row."""
    conditions = [_sessions.c.id == session_id, _sessions.c.revoked_at.is_(None)]
    if only_if_before is not None:
        conditions.append(_sessions.c.idle_expires_at < only_if_before)
    result = await conn.execute(
        update(_sessions)
        .where(*conditions)
        .values(last_seen_at=now, idle_expires_at=idle_expires_at)
    )
    return bool(result.rowcount)


async def revoke_sessions(
    conn: AsyncConnection,
    *,
    now: datetime,
    reason: str,
    session_id: uuid.UUID | None = None,
    user_id: uuid.UUID | None = None,
    except_session: uuid.UUID | None = None,
    logout_clients: Sequence[str] = (),
) -> list[uuid.UUID]:
    """Revoke one session or all of a user's live sessions (optionally but one); returns the
    ids newly revoked, announced to every replica when the transaction commits, and to each
    of `logout_clients` (back-channel logout) through the outbox, in this same transaction."""
    conditions: list[ColumnElement[bool]] = [_sessions.c.revoked_at.is_(None)]
    if session_id is not None:
        conditions.append(_sessions.c.id == session_id)
    if user_id is not None:
        conditions.append(_sessions.c.user_id == user_id)
    if except_session is not None:
        conditions.append(_sessions.c.id != except_session)
    rows = await conn.execute(
        update(_sessions)
        .where(*conditions)
        .values(revoked_at=now, revoke_reason=reason)
        .returning(_sessions.c.id, _sessions.c.user_id)
    )
    ended = [(row[0], row[1]) for row in rows]
    revoked = [session_id for session_id, _ in ended]
    if revoked:
        await conn.execute(
            update(_tokens)
            .where(_tokens.c.session_id.in_(revoked), _tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        await notify_revoked(conn, revoked)
        await backchannel.enqueue_logouts(conn, ended, logout_clients, now=now)
    return revoked


async def notify_revoked(conn: AsyncConnection, session_ids: list[uuid.UUID]) -> None:
    """Tell every replica's session cache (app.sessions.push), in the revoking transaction:
    PostgreSQL delivers it at commit, never before and never if it rolls back. SQLite is one
    node, with no one to tell."""
    if conn.dialect.name == "postgresql":
        await conn.execute(select(func.pg_notify(CHANNEL, payload_for(session_ids))))


async def insert_refresh_token(
    conn: AsyncConnection,
    *,
    session_id: uuid.UUID,
    token_hash: bytes,
    parent_id: uuid.UUID | None,
    generation: int,
    now: datetime,
    token_id: uuid.UUID | None = None,
) -> uuid.UUID:
    token_id = token_id or uuid.uuid4()
    await conn.execute(
        insert(_tokens).values(
            id=token_id,
            session_id=session_id,
            parent_id=parent_id,
            generation=generation,
            token_hash=token_hash,
            created_at=now,
        )
    )
    return token_id


async def lock_session_of_token(conn: AsyncConnection, token_hash: bytes) -> bool:
    """Lock the session that owns a refresh token, before touching any of its token rows.

    Every transaction that changes a session and its tokens (rotation, revocation) locks the
    session row first; one lock order means no deadlock between a refresh and a logout.
    Returns False when no session owns such a token.
    """
    owner = select(_tokens.c.session_id).where(_tokens.c.token_hash == token_hash)
    stmt = select(_sessions.c.id).where(_sessions.c.id == owner.scalar_subquery()).with_for_update()
    return (await conn.execute(stmt)).first() is not None


async def lock_session(conn: AsyncConnection, session_id: uuid.UUID) -> bool:
    """Lock a session row before changing it or its tokens (the one lock order, see above)."""
    stmt = select(_sessions.c.id).where(_sessions.c.id == session_id).with_for_update()
    return (await conn.execute(stmt)).first() is not None


async def session_dpop_key(conn: AsyncConnection, session_id: uuid.UUID) -> str | None:
    stmt = select(_sessions.c.dpop_jkt).where(_sessions.c.id == session_id)
    jkt: str | None = (await conn.execute(stmt)).scalar_one_or_none()
    return jkt


async def bind_session(conn: AsyncConnection, session_id: uuid.UUID, jkt: str) -> None:
    """Bind a session to a DPoP key (RFC 9449 §5); the caller holds its row lock."""
    await conn.execute(update(_sessions).where(_sessions.c.id == session_id).values(dpop_jkt=jkt))


async def lock_session_binding(
    conn: AsyncConnection, session_id: uuid.UUID
) -> tuple[bool, str | None]:
    """`lock_session`, also reading the DPoP key the session is bound to: (found, its jkt)."""
    stmt = (
        select(_sessions.c.id, _sessions.c.dpop_jkt)
        .where(_sessions.c.id == session_id)
        .with_for_update()
    )
    row = (await conn.execute(stmt)).first()
    return (row is not None, row.dpop_jkt if row is not None else None)


async def session_of_token(conn: AsyncConnection, token_hash: bytes) -> uuid.UUID | None:
    stmt = select(_tokens.c.session_id).where(_tokens.c.token_hash == token_hash)
    session_id: uuid.UUID | None = (await conn.execute(stmt)).scalar_one_or_none()
    return session_id


async def find_token_link(conn: AsyncConnection, token_hash: bytes) -> TokenLink | None:
    successor = aliased(_tokens)
    row = (
        await conn.execute(
            select(
                _tokens.c.id,
                _tokens.c.generation,
                _tokens.c.used_at,
                successor.c.id,
                successor.c.used_at,
                *_SESSION_COLUMNS,
            )
            .select_from(
                _tokens.join(_SESSION_JOIN, _sessions.c.id == _tokens.c.session_id).outerjoin(
                    successor, successor.c.parent_id == _tokens.c.id
                )
            )
            .where(_tokens.c.token_hash == token_hash)
        )
    ).first()
    if row is None:
        return None
    token_id, generation, used_at, successor_id, successor_used_at, *session = row
    return TokenLink(
        id=token_id,
        generation=generation,
        used_at=used_at,
        session=SessionState(*session),
        successor_id=successor_id,
        successor_used_at=successor_used_at,
    )


async def claim_token(conn: AsyncConnection, token_id: uuid.UUID, *, now: datetime) -> bool:
    """The atomic step of rotation: exactly one caller marks an unused token used.

    On PostgreSQL a concurrent caller blocks on the row lock, re-checks `used_at IS NULL`
    after the winner commits, and updates nothing; on SQLite transactions are serialised.
    """
    result = await conn.execute(
        update(_tokens)
        .where(_tokens.c.id == token_id, _tokens.c.used_at.is_(None))
        .values(used_at=now)
        .returning(_tokens.c.id)
    )
    return result.first() is not None


async def prune(
    conn: AsyncConnection, *, now: datetime, used_before: datetime | None
) -> tuple[int, int]:
    """Delete dead sessions with their tokens and, with `used_before`, live sessions' tokens
    used before then (past the window in which a replay is still recognised as theft)."""
    dead = or_(
        _sessions.c.revoked_at.is_not(None),
        _sessions.c.absolute_expires_at < now,
        _sessions.c.idle_expires_at < now,
    )
    dead_ids = select(_sessions.c.id).where(dead)
    tokens_deleted = (
        await conn.execute(delete(_tokens).where(_tokens.c.session_id.in_(dead_ids)))
    ).rowcount or 0
    if used_before is not None:
        old_used = delete(_tokens).where(
            _tokens.c.used_at.is_not(None), _tokens.c.used_at < used_before
        )
        tokens_deleted += (await conn.execute(old_used)).rowcount or 0
    sessions_deleted = (await conn.execute(delete(_sessions).where(dead))).rowcount or 0
    return sessions_deleted, tokens_deleted


@dataclass(frozen=True, slots=True)
class DeviceSession:
    id: uuid.UUID
    device_name: str | None
    user_agent: str | None
    ip: str | None
    created_at: datetime
    last_seen_at: datetime
    idle_expires_at: datetime
    absolute_expires_at: datetime


async def list_live_sessions(
    conn: AsyncConnection, user_id: uuid.UUID, *, now: datetime
) -> list[DeviceSession]:
    rows = await conn.execute(
        select(
            _sessions.c.id,
            _sessions.c.device_name,
            _sessions.c.user_agent,
            _sessions.c.ip,
            _sessions.c.created_at,
            _sessions.c.last_seen_at,
            _sessions.c.idle_expires_at,
            _sessions.c.absolute_expires_at,
        )
        .where(
            _sessions.c.user_id == user_id,
            _sessions.c.revoked_at.is_(None),
            _sessions.c.idle_expires_at > now,
            _sessions.c.absolute_expires_at > now,
        )
        .order_by(_sessions.c.created_at.desc())
    )
    return [DeviceSession(*row) for row in rows]


async def count_live_sessions(conn: AsyncConnection, *, now: datetime) -> int:
    stmt = select(func.count()).where(
        _sessions.c.revoked_at.is_(None),
        _sessions.c.idle_expires_at > now,
        _sessions.c.absolute_expires_at > now,
    )
    return int((await conn.execute(stmt)).scalar_one())


async def record_factor(
    conn: AsyncConnection, session_id: uuid.UUID, *, amr: str, now: datetime
) -> bool:
    """A second factor proved in a live session (a step-up): its methods and when."""
    result = await conn.execute(
        update(_sessions)
        .where(_sessions.c.id == session_id, _sessions.c.revoked_at.is_(None))
        .values(amr=amr, factor_at=now)
    )
    return bool(result.rowcount)
