"""User lifecycle: creation, activation, password changes. Used by the CLI and the API."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.security import PasswordHasher
from app.sessions import repository as sessions
from app.users import repository
from app.users.errors import EmailTaken, InvalidPassword, UserNotFound

PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 1024


def normalize_email(email: str) -> str:
    return email.strip().lower()


def check_password_policy(password: str) -> None:
    if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH:
        raise InvalidPassword()


async def create_user(
    conn: AsyncConnection,
    hasher: PasswordHasher,
    *,
    email: str,
    password: str,
    role: str,
    now: datetime,
) -> uuid.UUID:
    check_password_policy(password)
    email = normalize_email(email)
    if await repository.get_by_email(conn, email) is not None:
        raise EmailTaken()
    password_hash = await hasher.hash(password)
    try:
        return await repository.insert_user(
            conn, email=email, password_hash=password_hash, role=role, now=now
        )
    except IntegrityError as exc:  # a concurrent create of the same email
        raise EmailTaken() from exc


async def _require(conn: AsyncConnection, email: str) -> repository.UserRecord:
    user = await repository.get_by_email(conn, normalize_email(email))
    if user is None:
        raise UserNotFound()
    return user


async def set_active(conn: AsyncConnection, email: str, *, active: bool, now: datetime) -> int:
    """Activate or deactivate; deactivation revokes every session at once."""
    user = await _require(conn, email)
    await repository.set_active(conn, user.id, active=active)
    if active:
        return 0
    return len(
        await sessions.revoke_sessions(conn, now=now, reason="user_deactivated", user_id=user.id)
    )


async def set_password(
    conn: AsyncConnection, hasher: PasswordHasher, email: str, password: str, *, now: datetime
) -> int:
    """Replace the password and revoke every session, since the old password may be known."""
    check_password_policy(password)
    user = await _require(conn, email)
    await repository.set_password_hash(conn, user.id, await hasher.hash(password), now=now)
    return len(
        await sessions.revoke_sessions(conn, now=now, reason="password_changed", user_id=user.id)
    )
