"""The session rules with SQLAlchemy Core, one transaction each: SQLite's store (one writer at a
time), and the reference the PostgreSQL functions are tested against."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.audit import repository as audit
from app.core.db import autocommit_connection
from app.sessions import repository
from app.sessions.policy import SessionState, TokenLink
from app.sessions.store.base import Outcome, Rotation, RotationRequest, SessionStart, StartedFor
from app.users import repository as users
from app.users.repository import UserRecord


class PortableSessionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def rotate(self, request: RotationRequest) -> Rotation:
        async with self._engine.begin() as conn:
            return await _rotate(conn, request)

    async def start(self, start: SessionStart) -> StartedFor | None:
        async with self._engine.begin() as conn:
            user = await users.lock_for_login(conn, start.user_id)
            locked = user is not None and user.is_locked_at(start.now)
            if (
                user is None
                or user.password_hash != start.password_hash
                or not user.is_active
                or locked
                or user.mfa_enabled  # a second factor is owed: the two-step path (docs/mfa.md)
            ):
                return None
            if user.failed_logins or user.locked_until:
                await users.reset_login_failures(conn, user.id)
            await _insert_session(conn, start)
            await _insert_audit(
                conn,
                "login.succeeded",
                start.user_id,
                session_id=start.session_id,
                ip=start.ip,
                user_agent=start.user_agent,
                now=start.now,
            )
        return StartedFor(email=user.email, role=user.role)

    async def find_login_candidate(self, email: str) -> UserRecord | None:
        async with autocommit_connection(self._engine) as conn:
            return await users.get_by_email(conn, email)

    async def find_account(self, user_id: uuid.UUID) -> UserRecord | None:
        async with autocommit_connection(self._engine) as conn:
            return await users.get_by_id(conn, user_id)

    async def load(self, session_id: uuid.UUID) -> SessionState | None:
        async with autocommit_connection(self._engine) as conn:
            return await repository.get_session_state(conn, session_id)

    async def bound_key(self, session_id: uuid.UUID) -> str | None:
        async with autocommit_connection(self._engine) as conn:
            return await repository.session_dpop_key(conn, session_id)

    async def slide(
        self,
        session_id: uuid.UUID,
        *,
        now: datetime,
        idle_expires_at: datetime,
        only_if_before: datetime,
    ) -> bool:
        async with autocommit_connection(self._engine) as conn:
            return await repository.slide(
                conn,
                session_id,
                now=now,
                idle_expires_at=idle_expires_at,
                only_if_before=only_if_before,
            )

    async def session_of_token(self, token_hash: bytes) -> uuid.UUID | None:
        async with autocommit_connection(self._engine) as conn:
            return await repository.session_of_token(conn, token_hash)

    async def find_token_link(self, token_hash: bytes) -> TokenLink | None:
        async with autocommit_connection(self._engine) as conn:
            return await repository.find_token_link(conn, token_hash)

    async def count_live(self, now: datetime) -> int:
        async with autocommit_connection(self._engine) as conn:
            return await repository.count_live_sessions(conn, now=now)

    async def prune(self, now: datetime, used_before: datetime | None) -> tuple[int, int]:
        async with self._engine.begin() as conn:
            return await repository.prune(conn, now=now, used_before=used_before)


async def _insert_session(conn: AsyncConnection, s: SessionStart) -> None:
    await repository.insert_session(
        conn,
        session_id=s.session_id,
        user_id=s.user_id,
        device_name=s.device_name,
        user_agent=s.user_agent,
        ip=s.ip,
        now=s.now,
        idle_expires_at=s.idle_expires_at,
        absolute_expires_at=s.absolute_expires_at,
        dpop_jkt=s.dpop_jkt,
    )
    await repository.insert_refresh_token(
        conn,
        token_id=s.token_id,
        session_id=s.session_id,
        token_hash=s.token_hash,
        parent_id=None,
        generation=1,
        now=s.now,
    )


async def _rotate(conn: AsyncConnection, r: RotationRequest) -> Rotation:
    # A token of another session is refused before anything is locked.
    if await repository.session_of_token(conn, r.token_hash) != r.session_id:
        return Rotation("invalid")
    found, bound_to = await repository.lock_session_binding(conn, r.session_id)
    if not found:
        return Rotation("invalid")
    if bound_to is not None and bound_to != r.dpop_jkt:
        return await _refuse_unbound_proof(conn, r)
    link = await repository.find_token_link(conn, r.token_hash)
    if link is None or link.session.id != r.session_id:
        return Rotation("invalid")
    state = link.session
    if state.check(r.now) is not None:
        return Rotation("unusable", session=state, generation=link.generation)
    if link.used_at is None:
        if not r.may_rotate:  # the session's refresh limit is used up: nothing changes
            return Rotation("limited", session=state, generation=link.generation)
        if not await _claim(conn, link, r):  # pragma: no cover - impossible under the lock
            return Rotation("invalid")
        outcome: Outcome = "rotated"
        generation, reuse_class = link.generation + 1, None
        event, details = "refresh.rotated", dict[str, object](generation=generation)
        if bound_to is None and r.dpop_jkt is not None:
            # RFC 9449 §5: a refresh with a proof binds the session from now on.
            await repository.bind_session(conn, r.session_id, r.dpop_jkt)
            details["dpop_bound"] = True
    elif r.policy.is_retry(link, r.arrived_at):
        outcome, generation, reuse_class = "retried", link.generation, "retry_inside_interval"
        event, details = "refresh.retried", {"reuse_class": reuse_class}
    elif r.policy.is_superseded(link, r.arrived_at):
        return await _refuse_superseded(conn, link, r)
    else:
        return await _revoke_for_reuse(conn, link, r)
    state = await _slide(conn, state, r)
    await _audit_rotation(conn, r, event, state.user_id, details)
    return Rotation(outcome, state, generation, reuse_class)


async def _refuse_unbound_proof(conn: AsyncConnection, r: RotationRequest) -> Rotation:
    """A bound session refreshed without a proof by its key: nothing changes but the audit
    row, and no theft check (without the key a stolen token is worth nothing, and its owner
    must not be logged out by the attempt)."""
    link = await repository.find_token_link(conn, r.token_hash)
    if link is not None:
        await _insert_audit(
            conn,
            "refresh.dpop_refused",
            link.session.user_id,
            session_id=r.session_id,
            ip=r.ip,
            user_agent=r.user_agent,
            now=r.now,
            details={"proof": r.dpop_jkt is not None},
        )
    return Rotation("dpop_mismatch")


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


async def _refuse_superseded(
    conn: AsyncConnection, link: TokenLink, r: RotationRequest
) -> Rotation:
    reuse_class = "ancestor_inside_interval"
    details = {"reuse_class": reuse_class, "generation": link.generation}
    await _audit_rotation(conn, r, "refresh.superseded", link.session.user_id, details)
    return Rotation("superseded", link.session, link.generation, reuse_class)


async def _revoke_for_reuse(conn: AsyncConnection, link: TokenLink, r: RotationRequest) -> Rotation:
    reuse_class = "stale_replay" if link.is_newest_parent else "ancestor_replay"
    await repository.revoke_sessions(
        conn,
        now=r.now,
        reason="refresh_token_reused",
        session_id=r.session_id,
        logout_clients=r.logout_clients,
    )
    details = {"reuse_class": reuse_class, "generation": link.generation}
    await _audit_rotation(conn, r, "refresh.reuse_detected", link.session.user_id, details)
    return Rotation("reused", replace(link.session, revoked_at=r.now), link.generation, reuse_class)


async def _audit_rotation(
    conn: AsyncConnection,
    r: RotationRequest,
    event: str,
    user_id: uuid.UUID,
    details: Mapping[str, object],
) -> None:
    await _insert_audit(
        conn,
        event,
        user_id,
        session_id=r.session_id,
        ip=r.ip,
        user_agent=r.user_agent,
        now=r.now,
        details=details,
    )


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
    event: str,
    user_id: uuid.UUID,
    *,
    session_id: uuid.UUID,
    ip: str | None,
    user_agent: str | None,
    now: datetime,
    details: Mapping[str, object] | None = None,
) -> None:
    await audit.insert_event(
        conn,
        {
            "event": event,
            "user_id": user_id,
            "session_id": session_id,
            "ip": ip,
            "user_agent": user_agent,
            "details": dict(details or {}),
            "created_at": now,
        },
    )
