"""A per-process cache of session rows for the per-request check: bounded staleness.

Only ever used to *accept* a request: a cached row that looks expired or revoked is re-read.
A revocation made by this process clears the cache once its transaction commits; one made by
another replica is pushed here on PostgreSQL (app.sessions.push: milliseconds), and without the
push (SQLite, or its connection down) it is seen within `ttl` seconds. ttl=0 disables it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from app.sessions.policy import SessionState


class SessionStateCache:
    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._monotonic = monotonic
        self._entries: dict[uuid.UUID, tuple[float, SessionState]] = {}
        self._epoch = 0

    @property
    def epoch(self) -> int:
        """Moves on every `clear`. Take it before reading a row, and `put` the row with it: a
        row read before a revocation committed must not be cached after that commit's clear."""
        return self._epoch

    def get(self, session_id: uuid.UUID) -> SessionState | None:
        if self._ttl <= 0:
            return None
        entry = self._entries.get(session_id)
        if entry is None:
            return None
        stored_at, state = entry
        if self._monotonic() - stored_at > self._ttl:
            del self._entries[session_id]
            return None
        return state

    def put(self, state: SessionState, *, read_at: int) -> None:
        """Cache `state`, read when `epoch` was `read_at`; ignored if a clear came since."""
        if self._ttl <= 0 or read_at != self._epoch:
            return
        if len(self._entries) >= self._max:
            self._entries.pop(next(iter(self._entries)))
        self._entries[state.id] = (self._monotonic(), state)

    def discard(self, session_ids: list[uuid.UUID]) -> None:
        """Forget these sessions (revoked elsewhere). The epoch moves as on `clear`: a row of
        theirs read before the revocation committed must not be put back afterwards."""
        self._epoch += 1
        for session_id in session_ids:
            self._entries.pop(session_id, None)

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()
