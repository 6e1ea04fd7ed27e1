"""Revocation push: a revocation reaches every replica's session cache within milliseconds.

The revoking transaction also runs `pg_notify` (app.sessions.repository.notify_revoked), which
PostgreSQL delivers to every listener only when that transaction commits: never before the
revocation is visible, never for one rolled back. Each process keeps one dedicated connection
listening (`listen_for_revocations`) and drops the named sessions from its cache on receipt.

While that connection is down, notifications are missed and the cache falls back to its TTL
(SESSION_CACHE_TTL): the bound it always had. Every (re)connection clears the cache first, so
the revocations missed meanwhile are covered too. SQLite is one node: nothing to push.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

from app.sessions.cache import SessionStateCache

logger = logging.getLogger("app.sessions.push")

CHANNEL = "authsvc_sessions_revoked"
# PostgreSQL refuses a payload of 8000 bytes or more: beyond this many ids, "clear all".
MAX_IDS_PER_PAYLOAD = 200
CLEAR_ALL = "*"


def payload_for(session_ids: list[uuid.UUID]) -> str:
    """The notification for these revoked sessions: their ids, or "clear all" when many."""
    if len(session_ids) > MAX_IDS_PER_PAYLOAD:
        return CLEAR_ALL
    return ",".join(str(session_id) for session_id in session_ids)


def apply_payload(cache: SessionStateCache, payload: str) -> None:
    """Drop what a notification names; anything unreadable clears the cache (the safe side)."""
    try:
        ids = [uuid.UUID(part) for part in payload.split(",")] if payload != CLEAR_ALL else None
    except ValueError:
        ids = None
    if ids is None:
        cache.clear()
    else:
        cache.discard(ids)


class RevocationListener:
    """One dedicated connection LISTENing on CHANNEL, reconnecting with backoff when it drops."""

    def __init__(
        self,
        url: URL,
        cache: SessionStateCache,
        *,
        ping_interval: float = 5.0,
        max_backoff: float = 5.0,
        on_revoked: Callable[[], None] | None = None,
    ) -> None:
        """`on_revoked`: called on every notification (it wakes the outbox worker, which
        may have a back-channel logout to send for a revocation made on another replica)."""
        self._connect_args = url.translate_connect_args(username="user")
        self._cache = cache
        self._on_revoked = on_revoked
        self._ping_interval = ping_interval
        self._max_backoff = max_backoff

    async def run(self) -> None:
        """Listen until cancelled; a lost connection is replaced (0.1 s, doubling to 5 s)."""
        backoff = 0.1
        while True:
            try:
                await self._listen_until_lost()
                backoff, reason = 0.1, "connection_lost"  # it was up: retry promptly
            except Exception as exc:  # connecting failed: back off further
                reason = type(exc).__name__
            logger.warning(
                "revocation_push.down", extra={"error_type": reason, "retry_in": round(backoff, 2)}
            )
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))  # noqa: S311 - not security
            backoff = min(backoff * 2, self._max_backoff)

    async def _listen_until_lost(self) -> None:
        conn = await asyncpg.connect(
            **self._connect_args,
            timeout=5,
            server_settings={"application_name": f"authsvc-revocations-{os.getpid()}"},
        )
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _conn: lost.set())
            await conn.add_listener(CHANNEL, self._on_notification)
            # Listening now: whatever was revoked while no one listened is dropped here.
            self._cache.clear()
            logger.info("revocation_push.listening")
            await self._watch(conn, lost)
        finally:
            conn.terminate()

    async def _watch(self, conn: Any, lost: asyncio.Event) -> None:
        """Return when the connection is gone: closed (the termination listener) or silent (a
        frozen server or a broken network fails the ping)."""
        while not conn.is_closed():
            with contextlib.suppress(TimeoutError):  # asyncio.timeout keeps a cancellation
                async with asyncio.timeout(self._ping_interval):
                    await lost.wait()
            if lost.is_set():
                return
            try:
                await conn.execute("SELECT 1", timeout=2)
            except Exception:
                return

    def _on_notification(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        apply_payload(self._cache, payload)
        if self._on_revoked is not None:
            self._on_revoked()
