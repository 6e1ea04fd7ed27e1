"""All SQL touching the service_clients table."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.clients.models import ServiceClient
from app.core.db import table_of

_clients = table_of(ServiceClient)


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    secret_hash: str
    previous_secret_hash: str | None
    previous_secret_expires_at: datetime | None
    audiences: tuple[str, ...]
    scopes: tuple[str, ...]
    created_at: datetime
    secret_rotated_at: datetime | None
    disabled_at: datetime | None
    last_used_at: datetime | None


_COLUMNS = (
    _clients.c.client_id,
    _clients.c.secret_hash,
    _clients.c.previous_secret_hash,
    _clients.c.previous_secret_expires_at,
    _clients.c.audiences,
    _clients.c.scopes,
    _clients.c.created_at,
    _clients.c.secret_rotated_at,
    _clients.c.disabled_at,
    _clients.c.last_used_at,
)


def _record(row: Any) -> ClientRecord:
    values = list(row)
    values[4] = tuple(values[4].split())
    values[5] = tuple(values[5].split())
    return ClientRecord(*values)


async def get(conn: AsyncConnection, client_id: str) -> ClientRecord | None:
    query = select(*_COLUMNS).where(_clients.c.client_id == client_id)
    row = (await conn.execute(query)).first()
    return _record(row) if row else None


async def disabled_at(conn: AsyncConnection, client_id: str) -> tuple[datetime | None] | None:
    """(disabled_at,) of the client, or None when there is no such client: the one column a
    service token's check needs."""
    query = select(_clients.c.disabled_at).where(_clients.c.client_id == client_id)
    row = (await conn.execute(query)).first()
    return (row[0],) if row else None


async def list_all(conn: AsyncConnection) -> list[ClientRecord]:
    rows = await conn.execute(select(*_COLUMNS).order_by(_clients.c.client_id))
    return [_record(row) for row in rows]


async def insert_client(
    conn: AsyncConnection,
    *,
    client_id: str,
    secret_hash: str,
    audiences: tuple[str, ...],
    scopes: tuple[str, ...],
    now: datetime,
) -> None:
    await conn.execute(
        insert(_clients).values(
            client_id=client_id,
            secret_hash=secret_hash,
            audiences=" ".join(audiences),
            scopes=" ".join(scopes),
            created_at=now,
        )
    )


async def set_secret(
    conn: AsyncConnection,
    client_id: str,
    *,
    secret_hash: str,
    previous_hash: str | None,
    previous_expires_at: datetime | None,
    now: datetime,
) -> None:
    await conn.execute(
        update(_clients)
        .where(_clients.c.client_id == client_id)
        .values(
            secret_hash=secret_hash,
            previous_secret_hash=previous_hash,
            previous_secret_expires_at=previous_expires_at,
            secret_rotated_at=now,
        )
    )


async def disable(conn: AsyncConnection, client_id: str, now: datetime) -> bool:
    """True when this call disabled it (False: already disabled)."""
    result = await conn.execute(
        update(_clients)
        .where(_clients.c.client_id == client_id, _clients.c.disabled_at.is_(None))
        .values(disabled_at=now)
    )
    return result.rowcount == 1


async def enable(conn: AsyncConnection, client_id: str) -> None:
    await conn.execute(
        update(_clients).where(_clients.c.client_id == client_id).values(disabled_at=None)
    )


async def mark_used(conn: AsyncConnection, client_id: str, now: datetime) -> None:
    await conn.execute(
        update(_clients).where(_clients.c.client_id == client_id).values(last_used_at=now)
    )
