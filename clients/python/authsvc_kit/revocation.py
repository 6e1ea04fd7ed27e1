"""Ended sessions, as back-channel logout reported them: in this process by default.

A revocation names a session (`sid`: every token of it is refused) or, with no sid, a user
(`sub`: every token of that user issued at or before the logout's `iat`). Entries are kept for
the longest access token's life plus twice the leeway (the issuer's clock may run `leeway`
ahead, and a token is accepted `leeway` past its exp), after which no token they would refuse
is valid anyway. Listeners (the WebSocket registry) hear every revocation, local or from another
replica, so they can close what belongs to it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from authsvc_kit.principal import Principal

_SWEEP_EVERY = 1024  # inserts between sweeps of expired entries


@dataclass(frozen=True, slots=True)
class Revocation:
    sid: str | None
    sub: str | None
    issued_at: int  # the logout token's iat: a sub-only revocation refuses tokens up to it
    expires_at: float  # unix time after which the entry is dropped

    def covers(self, principal: Principal) -> bool:
        if self.sid is not None:
            return principal.session_id == self.sid
        return principal.user_id == self.sub and principal.issued_at <= self.issued_at


Listener = Callable[[Revocation], None]


class RevocationStore(Protocol):
    def add_listener(self, listener: Listener) -> None: ...
    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    async def revoke(self, revocation: Revocation) -> None: ...
    def knows(self, principal: Principal) -> bool:
        """What this process has heard, without I/O (every revocation reaches the listeners
        only after it is recorded here)."""
        ...

    async def is_revoked(self, principal: Principal) -> bool: ...
    async def claim_jti(self, jti: str, ttl: int) -> bool: ...
    async def release_jti(self, jti: str) -> None: ...


class MemoryRevocations:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._sids: dict[str, float] = {}  # sid -> expires_at
        self._subs: dict[str, tuple[int, float]] = {}  # sub -> (iat cut-off, expires_at)
        self._jtis: dict[str, float] = {}
        self._listeners: list[Listener] = []
        self._inserts = 0

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def revoke(self, revocation: Revocation) -> None:
        self.remember(revocation)

    def remember(self, revocation: Revocation) -> None:
        """Record it here and tell the listeners (also used by the Redis store's mirror)."""
        if revocation.sid is not None:
            self._sids[revocation.sid] = max(
                revocation.expires_at, self._sids.get(revocation.sid, 0.0)
            )
        elif revocation.sub is not None:
            cutoff, expires = self._subs.get(revocation.sub, (0, 0.0))
            self._subs[revocation.sub] = (
                max(cutoff, revocation.issued_at),
                max(expires, revocation.expires_at),
            )
        self._count_insert()
        for listener in self._listeners:
            listener(revocation)

    def knows(self, principal: Principal) -> bool:
        now = self._clock()
        if principal.session_id is not None:
            expires = self._sids.get(principal.session_id)
            if expires is not None and expires > now:
                return True
        entry = self._subs.get(principal.user_id)
        return entry is not None and entry[1] > now and principal.issued_at <= entry[0]

    async def is_revoked(self, principal: Principal) -> bool:
        return self.knows(principal)

    async def claim_jti(self, jti: str, ttl: int) -> bool:
        now = self._clock()
        expires = self._jtis.get(jti)
        if expires is not None and expires > now:
            return False
        self._jtis[jti] = now + ttl
        self._count_insert()
        return True

    async def release_jti(self, jti: str) -> None:
        self._jtis.pop(jti, None)

    def _count_insert(self) -> None:
        self._inserts += 1
        if self._inserts % _SWEEP_EVERY == 0:
            now = self._clock()
            self._sids = {k: v for k, v in self._sids.items() if v > now}
            self._subs = {k: v for k, v in self._subs.items() if v[1] > now}
            self._jtis = {k: v for k, v in self._jtis.items() if v > now}
