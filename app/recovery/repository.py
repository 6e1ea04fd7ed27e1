"""All SQL of account tokens (password reset, address verification) and of pending
registrations."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.db import table_of
from app.recovery.models import AccountToken, PendingRegistration

_tokens = table_of(AccountToken)
_pending = table_of(PendingRegistration)


@dataclass(frozen=True, slots=True)
class FoundToken:
    id: uuid.UUID
    user_id: uuid.UUID
    created_at: datetime
    expires_at: datetime
    attempts: int
    spent_at: datetime | None

    def is_usable_at(self, now: datetime) -> bool:
        """Neither spent nor expired."""
        return self.spent_at is None and now < self.expires_at


async def insert(
    conn: AsyncConnection,
    *,
    purpose: str,
    user_id: uuid.UUID,
    request_id: uuid.UUID,
    token_hash: bytes,
    now: datetime,
    expires_at: datetime,
) -> uuid.UUID | None:
    """The new token's id; None when this request already has its token (processed again)."""
    insert_ = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    token_id = uuid.uuid4()
    row = {
        "id": token_id,
        "purpose": purpose,
        "user_id": user_id,
        "request_id": request_id,
        "token_hash": token_hash,
        "created_at": now,
        "expires_at": expires_at,
        "attempts": 0,
    }
    result = await conn.execute(
        insert_(_tokens).values(row).on_conflict_do_nothing(index_elements=["request_id"])
    )
    return token_id if result.rowcount == 1 else None


async def spend_others(
    conn: AsyncConnection,
    user_id: uuid.UUID,
    *,
    purpose: str,
    now: datetime,
    reason: str,
    except_id: uuid.UUID | None = None,
) -> None:
    """Every open token of this purpose and user (but `except_id`)."""
    query = update(_tokens).where(
        _tokens.c.user_id == user_id, _tokens.c.purpose == purpose, _tokens.c.spent_at.is_(None)
    )
    if except_id is not None:
        query = query.where(_tokens.c.id != except_id)
    await conn.execute(query.values(spent_at=now, spent_reason=reason))


async def spend(conn: AsyncConnection, token_id: uuid.UUID, *, now: datetime, reason: str) -> None:
    await conn.execute(
        update(_tokens).where(_tokens.c.id == token_id).values(spent_at=now, spent_reason=reason)
    )


async def find(
    conn: AsyncConnection, purpose: str, token_hash: bytes, *, for_update: bool = False
) -> FoundToken | None:
    query = select(
        _tokens.c.id,
        _tokens.c.user_id,
        _tokens.c.created_at,
        _tokens.c.expires_at,
        _tokens.c.attempts,
        _tokens.c.spent_at,
    ).where(_tokens.c.token_hash == token_hash, _tokens.c.purpose == purpose)
    if for_update:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    return FoundToken(*row) if row else None


async def count_failure(
    conn: AsyncConnection, token_id: uuid.UUID, *, now: datetime, max_attempts: int
) -> None:
    """One more refused confirmation; the last allowed one spends the token."""
    await conn.execute(
        update(_tokens)
        .where(_tokens.c.id == token_id, _tokens.c.spent_at.is_(None))
        .values(attempts=_tokens.c.attempts + 1)
    )
    await conn.execute(
        update(_tokens)
        .where(
            _tokens.c.id == token_id,
            _tokens.c.spent_at.is_(None),
            _tokens.c.attempts >= max_attempts,
        )
        .values(spent_at=now, spent_reason="too_many_attempts")
    )


async def delete_expired_tokens(conn: AsyncConnection, *, before: datetime) -> int:
    result = await conn.execute(delete(_tokens).where(_tokens.c.expires_at < before))
    return int(result.rowcount or 0)


@dataclass(frozen=True, slots=True)
class Pending:
    id: uuid.UUID
    email: str
    sealed_password_hash: str
    expires_at: datetime


_PENDING_COLUMNS = (
    _pending.c.id,
    _pending.c.email,
    _pending.c.sealed_password_hash,
    _pending.c.expires_at,
)


async def insert_pending(
    conn: AsyncConnection,
    *,
    email: str,
    request_id: uuid.UUID,
    token_hash: bytes,
    sealed_password_hash: str,
    now: datetime,
    expires_at: datetime,
) -> bool:
    """False when this request has its row already (processed again)."""
    insert_ = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    row = {
        "id": uuid.uuid4(),
        "email": email,
        "request_id": request_id,
        "token_hash": token_hash,
        "sealed_password_hash": sealed_password_hash,
        "attempts": 0,
        "created_at": now,
        "expires_at": expires_at,
    }
    result = await conn.execute(
        insert_(_pending).values(row).on_conflict_do_nothing(index_elements=["request_id"])
    )
    return bool(result.rowcount == 1)


async def find_pending(conn: AsyncConnection, token_hash: bytes) -> Pending | None:
    query = select(*_PENDING_COLUMNS).where(_pending.c.token_hash == token_hash)
    row = (await conn.execute(query)).first()
    return Pending(*row) if row else None


async def take_pending(conn: AsyncConnection, pending_id: uuid.UUID) -> bool:
    """Deletes the registration; of two confirmations at once, one gets True."""
    result = await conn.execute(delete(_pending).where(_pending.c.id == pending_id))
    return bool(result.rowcount == 1)


async def delete_pending_of(conn: AsyncConnection, email: str) -> None:
    await conn.execute(delete(_pending).where(_pending.c.email == email))


async def count_pending_failure(
    conn: AsyncConnection, pending_id: uuid.UUID, *, max_attempts: int
) -> None:
    """One more wrong password; the last allowed one deletes the registration."""
    await conn.execute(
        update(_pending).where(_pending.c.id == pending_id).values(attempts=_pending.c.attempts + 1)
    )
    await conn.execute(
        delete(_pending).where(_pending.c.id == pending_id, _pending.c.attempts >= max_attempts)
    )


async def delete_expired_pending(conn: AsyncConnection, *, now: datetime) -> int:
    result = await conn.execute(delete(_pending).where(_pending.c.expires_at <= now))
    return int(result.rowcount or 0)
