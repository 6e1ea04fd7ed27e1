"""All SQL of the DPoP replay cache (its table: app.dpop.models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

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


# The same statement for the asyncpg driver itself, for a batch of keys (the hot path: one per
# proof, where SQLAlchemy's execution path cost more than the statement, docs/performance.md).
_RECORD_FIRST_USES = (
    "INSERT INTO dpop_seen_proofs (key, expires_at) SELECT k, $2 FROM unnest($1::bytea[]) AS k "
    "ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at "
    "WHERE dpop_seen_proofs.expires_at < $3 RETURNING key"
)


async def record_first_uses_asyncpg(
    raw: Any, keys: list[bytes], *, now: datetime, expires_at: datetime
) -> set[bytes]:
    """`record_first_use` for distinct `keys` at once, on a driver connection of
    app.core.db.driver_connection: the keys that were unseen (or whose entry had expired)."""
    rows = await raw.fetch(_RECORD_FIRST_USES, keys, expires_at, now)
    return {bytes(row[0]) for row in rows}


async def delete_expired(conn: AsyncConnection, now: datetime) -> int:
    result = await conn.execute(delete(_seen).where(_seen.c.expires_at < now))
    return int(result.rowcount or 0)
