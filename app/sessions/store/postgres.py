"""PostgreSQL's store: the hot paths (rotation, a login's session start and its first read) are
one call each on the pooled connection's own asyncpg driver, outside any transaction, so each
call is its own transaction and one round trip. SQLAlchemy's execution path costs more CPU
than these statements (docs/performance.md). Everything else is the portable store's.

Concurrent rotations share one call (app.core.coalesce.Batcher): the rotations a worker is
asked for in the same event-loop iteration go together (a session another transaction holds is
skipped and rotated alone), through
`authsvc_rotate_refresh_many`, one transaction and one commit for all (docs/refresh-rotation.md,
"Concurrent refreshes share a commit"). A rotation alone is one call of `authsvc_rotate_refresh`.

The functions are app/sessions/sql/*.sql, installed by migrations 0015, 0007 and 0019 (0004,
0005, 0009, 0010 and 0013 installed the earlier versions).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Sequence
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.coalesce import Batcher
from app.core.db import driver_connection, server_gone
from app.sessions.policy import SessionState
from app.sessions.store.base import Outcome, Rotation, RotationRequest, SessionStart, StartedFor
from app.sessions.store.portable import PortableSessionStore
from app.users import repository as users
from app.users.repository import UserRecord

_logger = logging.getLogger("app.sessions")
_ROTATE = (
    "SELECT * FROM authsvc_rotate_refresh"
    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
)
_ROTATE_MANY = (
    "SELECT * FROM authsvc_rotate_refresh_many"
    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
)
# A batch is one transaction holding its sessions' row locks until it commits: bounded, so that
# a slow batch holds up few sessions, and its rotations' subtransaction-free loop stays short.
_MAX_BATCH = 32
_START = "SELECT * FROM authsvc_start_session($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"


class PostgresSessionStore(PortableSessionStore):
    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        # The same Core statement as the portable read, compiled once for this driver.
        self._by_email = str(
            users.BY_EMAIL.compile(dialect=PGDialect_asyncpg())  # type: ignore[no-untyped-call]
        )
        # None: the rotation's session was busy (held by another transaction), not rotated.
        self._rotations: Batcher[RotationRequest, Rotation | None] = Batcher(
            self._rotate_batch, max_batch=_MAX_BATCH
        )

    async def rotate(self, request: RotationRequest) -> Rotation:
        rotation = await self._rotations.submit(request)
        if rotation is None:  # its session was held by another transaction: alone, it waits
            return await self._rotate_one(request)
        return rotation

    async def _rotate_batch(
        self, requests: list[RotationRequest]
    ) -> list[Rotation | None | Exception]:
        # One call per set of shared arguments (in practice one: they are the service's own).
        groups: dict[tuple[float, float, float, tuple[str, ...]], list[int]] = {}
        for index, r in enumerate(requests):
            groups.setdefault(_shared_arguments(r), []).append(index)
        results: list[Rotation | None | Exception] = [RuntimeError("not rotated")] * len(requests)
        for indexes in groups.values():
            batch = [requests[i] for i in indexes]
            try:
                answers = await self._rotate_together(batch)
            except Exception as exc:
                answers = [exc] * len(batch)
            for i, answer in zip(indexes, answers, strict=True):
                results[i] = answer
        return results

    async def _rotate_together(
        self, requests: list[RotationRequest]
    ) -> Sequence[Rotation | None | Exception]:
        if len(requests) == 1:
            return [await self._rotate_one(requests[0])]
        try:
            return await self._rotate_many(requests)
        except asyncpg.PostgresError as exc:
            if server_gone(exc) or str(exc.sqlstate or "").startswith("53"):
                raise  # the server's trouble, not a rotation's: each request answers 503
            # One rotation's own failure: nothing of the batch was committed, so each goes
            # again alone, one after another (not 32 at once on a pool of 10), and fails, if
            # it does, by itself.
            _logger.warning(
                "rotation.batch_failed", extra={"sqlstate": exc.sqlstate, "size": len(requests)}
            )
            return [await _outcome_of(self._rotate_one(r)) for r in requests]

    async def _rotate_many(self, requests: list[RotationRequest]) -> list[Rotation | None]:
        """Each request's rotation, or None for one whose session was busy (not rotated)."""
        first = requests[0]
        async with driver_connection(self._engine) as conn:
            rows = await conn.fetch(
                _ROTATE_MANY,
                [r.session_id for r in requests],
                [r.token_hash for r in requests],
                [r.successor_id for r in requests],
                [r.successor_hash for r in requests],
                [r.now for r in requests],
                *_shared_arguments(first)[:3],
                [r.ip for r in requests],
                [r.user_agent for r in requests],
                [r.arrived_at for r in requests],
                [r.may_rotate for r in requests],
                list(first.logout_clients),
                [r.dpop_jkt for r in requests],
            )
        by_position = {row["ord"]: row for row in rows}
        return [
            None if by_position[i]["outcome"] == "busy" else _rotation_of(r, by_position[i])
            for i, r in enumerate(requests, start=1)
        ]

    async def _rotate_one(self, request: RotationRequest) -> Rotation:
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
        return _rotation_of(r, row)

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


async def _outcome_of(rotation: Awaitable[Rotation]) -> Rotation | Exception:
    """The rotation, or the exception it raised (a cancellation is raised: it is the batch's)."""
    try:
        return await rotation
    except Exception as exc:
        return exc


def _shared_arguments(r: RotationRequest) -> tuple[float, float, float, tuple[str, ...]]:
    """The arguments one call of `authsvc_rotate_refresh_many` passes once for all its
    rotations (the service's own, the same for every request)."""
    policy = r.policy
    return (
        policy.idle_timeout.total_seconds(),
        policy.touch_interval.total_seconds(),
        policy.reuse_interval.total_seconds(),
        r.logout_clients,
    )


def _rotation_of(request: RotationRequest, row: Any) -> Rotation:
    outcome: Outcome = row["outcome"]
    if outcome in ("invalid", "dpop_mismatch"):
        return Rotation(outcome)
    return Rotation(
        outcome,
        session=_session_from_row(request.session_id, row),
        generation=row["generation"],
        reuse_class=row["reuse_class"],
    )


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
        amr=row["amr"],
        auth_time=row["auth_time"],
        factor_at=row["factor_at"],
    )
