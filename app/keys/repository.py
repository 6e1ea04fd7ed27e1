"""All SQL touching the signing_keys table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.db import table_of
from app.keys.models import SigningKey

_keys = table_of(SigningKey)


@dataclass(frozen=True, slots=True)
class StoredKey:
    kid: str
    algorithm: str
    private_key_encrypted: bytes
    public_jwk: str
    created_at: datetime
    activates_at: datetime


# An arbitrary constant naming "signing key creation" among PostgreSQL advisory locks.
_KEY_CREATION_LOCK = 0x6B657973  # "keys"


async def lock_key_creation(conn: AsyncConnection) -> None:
    """Serialise key creation across processes until the transaction ends."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _KEY_CREATION_LOCK})


async def list_live_keys(conn: AsyncConnection) -> list[StoredKey]:
    """Keys neither retired nor revoked, oldest activation first."""
    rows = await conn.execute(
        select(
            _keys.c.kid,
            _keys.c.algorithm,
            _keys.c.private_key_encrypted,
            _keys.c.public_jwk,
            _keys.c.created_at,
            _keys.c.activates_at,
        )
        .where(_keys.c.retired_at.is_(None), _keys.c.revoked_at.is_(None))
        .order_by(_keys.c.activates_at, _keys.c.kid)
    )
    return [StoredKey(*row) for row in rows]


async def insert_key(conn: AsyncConnection, key: StoredKey) -> None:
    await conn.execute(
        insert(_keys).values(
            kid=key.kid,
            algorithm=key.algorithm,
            private_key_encrypted=key.private_key_encrypted,
            public_jwk=key.public_jwk,
            created_at=key.created_at,
            activates_at=key.activates_at,
        )
    )


async def retire(conn: AsyncConnection, kids: list[str], *, now: datetime) -> None:
    if kids:
        await conn.execute(update(_keys).where(_keys.c.kid.in_(kids)).values(retired_at=now))


@dataclass(frozen=True, slots=True)
class KeyRevocation:
    kid: str
    revoked_at: datetime | None  # None: the key is not revoked


async def find_revocation(conn: AsyncConnection, kid: str) -> KeyRevocation | None:
    """The key's revocation state; None when no key has this kid (live, retired or revoked)."""
    row = (
        await conn.execute(select(_keys.c.kid, _keys.c.revoked_at).where(_keys.c.kid == kid))
    ).one_or_none()
    return None if row is None else KeyRevocation(row.kid, row.revoked_at)


async def revoke(conn: AsyncConnection, kid: str, *, now: datetime) -> None:
    await conn.execute(update(_keys).where(_keys.c.kid == kid).values(revoked_at=now))
