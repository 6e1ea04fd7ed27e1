"""All SQL of the DPoP replay cache (its table: app.dpop.models)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.db import table_of
from app.dpop.models import SeenProof

_seen = table_of(SeenProof)


async def record_first_use(
    conn: AsyncConnection, key: bytes, *, now: datetime, expires_at: datetime
) -> bool:
    """Record `key` as seen until `expires_at`; whether it was unseen (or its entry expired).
    One statement: two replicas racing on one key cannot both see it first."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    values = insert(_seen).values(key=key, expires_at=expires_at)
    statement = values.on_conflict_do_update(
        index_elements=[_seen.c.key],
        set_={"expires_at": values.excluded.expires_at},
        where=_seen.c.expires_at < now,
    ).returning(_seen.c.key)
    return (await conn.execute(statement)).first() is not None


async def delete_expired(conn: AsyncConnection, now: datetime) -> int:
    result = await conn.execute(delete(_seen).where(_seen.c.expires_at < now))
    return int(result.rowcount or 0)
