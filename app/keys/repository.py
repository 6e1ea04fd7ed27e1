from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.db import table_of
from app.keys.models import SigningKey


@dataclass(frozen=True, slots=True)
class StoredKey:
    kid: str
    algorithm: str
    private_key_encrypted: bytes
    public_jwk: str
    created_at: datetime


# An arbitrary constant naming "signing key creation" among PostgreSQL advisory locks.
_KEY_CREATION_LOCK = 0x6B657973  # "keys"


async def lock_key_creation(conn: AsyncConnection) -> None:
    """Serialise key creation across processes until the transaction ends."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _KEY_CREATION_LOCK})


async def list_live_keys(conn: AsyncConnection) -> list[StoredKey]:
    t = table_of(SigningKey)
    rows = await conn.execute(
        select(t.c.kid, t.c.algorithm, t.c.private_key_encrypted, t.c.public_jwk, t.c.created_at)
        .where(t.c.retired_at.is_(None))
        .order_by(t.c.created_at, t.c.kid)
    )
    return [StoredKey(*row) for row in rows]


async def insert_key(conn: AsyncConnection, key: StoredKey) -> None:
    await conn.execute(
        insert(table_of(SigningKey)).values(
            kid=key.kid,
            algorithm=key.algorithm,
            private_key_encrypted=key.private_key_encrypted,
            public_jwk=key.public_jwk,
            created_at=key.created_at,
        )
    )
