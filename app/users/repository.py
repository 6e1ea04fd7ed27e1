"""All SQL touching the users table."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.db import table_of
from app.users.models import User

_users = table_of(User)


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: uuid.UUID
    email: str
    password_hash: str
    role: str
    is_active: bool
    failed_logins: int
    locked_until: datetime | None
    email_verified_at: datetime | None = None
    # A confirmed second factor (app/mfa): a login then takes two steps.
    mfa_enabled: bool = False

    def is_locked_at(self, now: datetime) -> bool:
        """Whether a lockout (after too many wrong passwords) is in force at `now`."""
        return self.locked_until is not None and self.locked_until > now


_COLUMNS = (
    _users.c.id,
    _users.c.email,
    _users.c.password_hash,
    _users.c.role,
    _users.c.is_active,
    _users.c.failed_logins,
    _users.c.locked_until,
    _users.c.email_verified_at,
    _users.c.mfa_enabled,
)


BY_EMAIL = select(*_COLUMNS).where(_users.c.email == bindparam("email"))


async def get_by_email(conn: AsyncConnection, email: str) -> UserRecord | None:
    row = (await conn.execute(BY_EMAIL, {"email": email})).first()
    return UserRecord(*row) if row else None


async def get_by_id(conn: AsyncConnection, user_id: uuid.UUID) -> UserRecord | None:
    row = (await conn.execute(select(*_COLUMNS).where(_users.c.id == user_id))).first()
    return UserRecord(*row) if row else None


async def list_users(
    conn: AsyncConnection, *, email_contains: str | None, after: str | None, limit: int
) -> list[UserRecord]:
    """Users by email (stored lower-cased), from just after `after` (keyset paging)."""
    stmt = select(*_COLUMNS)
    if email_contains:
        stmt = stmt.where(_users.c.email.contains(email_contains.lower(), autoescape=True))
    if after is not None:
        stmt = stmt.where(_users.c.email > after)
    rows = await conn.execute(stmt.order_by(_users.c.email).limit(limit))
    return [UserRecord(*row) for row in rows]


async def lock_for_login(conn: AsyncConnection, user_id: uuid.UUID) -> UserRecord | None:
    """Re-read the user under a row lock, so a concurrent password change or deactivation
    either happens before this login (and is seen) or waits for it (and revokes its session)."""
    stmt = select(*_COLUMNS).where(_users.c.id == user_id).with_for_update()
    row = (await conn.execute(stmt)).first()
    return UserRecord(*row) if row else None


async def insert_user(
    conn: AsyncConnection,
    *,
    email: str,
    password_hash: str,
    role: str,
    now: datetime,
    verified: bool = True,
) -> uuid.UUID:
    user_id = uuid.uuid4()
    await conn.execute(
        insert(_users).values(
            id=user_id,
            email=email,
            password_hash=password_hash,
            role=role,
            is_active=True,
            created_at=now,
            password_changed_at=now,
            email_verified_at=now if verified else None,
        )
    )
    return user_id


async def lock_active_admins(conn: AsyncConnection) -> list[uuid.UUID]:
    """The active admins, their rows locked until the transaction ends (in id order, so two
    transactions taking them never deadlock). On PostgreSQL a transaction that waited re-checks
    each row once the lock is free, so it sees an admin deactivated meanwhile as inactive.
    (SQLite's one writer serialises these transactions anyway.)"""
    stmt = (
        select(_users.c.id)
        .where(_users.c.role == "admin", _users.c.is_active.is_(True))
        .order_by(_users.c.id)
        .with_for_update()
    )
    return list((await conn.execute(stmt)).scalars())


async def count_active_admins(conn: AsyncConnection) -> int:
    stmt = (
        select(func.count())
        .select_from(_users)
        .where(_users.c.role == "admin", _users.c.is_active.is_(True))
    )
    return int((await conn.execute(stmt)).scalar_one())


async def set_active(conn: AsyncConnection, user_id: uuid.UUID, *, active: bool) -> None:
    await conn.execute(update(_users).where(_users.c.id == user_id).values(is_active=active))


async def set_password_hash(
    conn: AsyncConnection, user_id: uuid.UUID, password_hash: str, *, now: datetime | None
) -> None:
    values: dict[str, object] = {"password_hash": password_hash}
    if now is not None:
        values["password_changed_at"] = now
    await conn.execute(update(_users).where(_users.c.id == user_id).values(**values))


async def record_login_failure(
    conn: AsyncConnection, user_id: uuid.UUID, *, failed_logins: int, locked_until: datetime | None
) -> None:
    await conn.execute(
        update(_users)
        .where(_users.c.id == user_id)
        .values(failed_logins=failed_logins, locked_until=locked_until)
    )


async def reset_login_failures(conn: AsyncConnection, user_id: uuid.UUID) -> None:
    await conn.execute(
        update(_users).where(_users.c.id == user_id).values(failed_logins=0, locked_until=None)
    )


async def password_changed_at(conn: AsyncConnection, user_id: uuid.UUID) -> datetime | None:
    query = select(_users.c.password_changed_at).where(_users.c.id == user_id)
    row = (await conn.execute(query)).first()
    return row[0] if row else None


async def mark_email_verified(conn: AsyncConnection, user_id: uuid.UUID, *, now: datetime) -> None:
    await conn.execute(
        update(_users)
        .where(_users.c.id == user_id, _users.c.email_verified_at.is_(None))
        .values(email_verified_at=now)
    )


async def set_mfa_enabled(conn: AsyncConnection, user_id: uuid.UUID, *, enabled: bool) -> None:
    await conn.execute(update(_users).where(_users.c.id == user_id).values(mfa_enabled=enabled))
