"""The session store: the database side of the session rules, one implementation per database,
chosen once at start-up (see `base` for the contract)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.db import on_asyncpg
from app.sessions.store.base import (
    Outcome,
    Rotation,
    RotationRequest,
    SessionStart,
    SessionStore,
    StartedFor,
)
from app.sessions.store.portable import PortableSessionStore
from app.sessions.store.postgres import PostgresSessionStore

__all__ = [
    "Outcome",
    "PortableSessionStore",
    "PostgresSessionStore",
    "Rotation",
    "RotationRequest",
    "SessionStart",
    "SessionStore",
    "StartedFor",
    "open_store",
]


def open_store(engine: AsyncEngine) -> SessionStore:
    """The store for this engine's database (called once, by the composition root)."""
    if on_asyncpg(engine):
        return PostgresSessionStore(engine)
    return PortableSessionStore(engine)
