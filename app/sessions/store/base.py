"""The session store's contract: every database access of the session rules that runs outside the
request's unit of work, one implementation per database, chosen once at start-up.

- `PostgresSessionStore`: a rotation and a login's session start are one call each of the
  functions in app/sessions/sql/ (installed by migrations 0005 and 0007), on the driver
  connection: one round trip, one implicit transaction.
- `PortableSessionStore` (SQLite, or any database): the same rules with SQLAlchemy Core, one
  transaction each.

Neither raises for a rule: they report an outcome, and the session service decides what the
client sees. Services never ask which database they run on.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from app.sessions.policy import SessionPolicy, SessionState, TokenLink
from app.users.repository import UserRecord

Outcome = Literal[
    "invalid", "unusable", "limited", "rotated", "retried", "superseded", "reused", "dpop_mismatch"
]


@dataclass(frozen=True, slots=True)
class RotationRequest:
    session_id: uuid.UUID  # as the token names it; checked against the token's stored row
    token_hash: bytes
    successor_id: uuid.UUID
    successor_hash: bytes
    now: datetime  # when the rows are written, and the deadlines checked
    policy: SessionPolicy  # idle timeout, touch interval and reuse interval
    ip: str | None
    user_agent: str | None
    # What the reuse interval is measured from (SessionPolicy.credited_arrival).
    arrived_at: datetime
    # Whether the session's refresh limit has room for a rotation. Without it an unused token
    # is refused ("limited", nothing written); retries and replays are answered as ever (a
    # retry's rotation was counted already, and theft is caught whatever the limit).
    may_rotate: bool = True
    # The back-channel logout clients told (through the outbox, in the same transaction)
    # when a replayed token revokes the session.
    logout_clients: tuple[str, ...] = ()
    # The RFC 7638 thumbprint of the DPoP key whose proof came with the refresh (RFC 9449),
    # if one did. A session bound to a key rotates only with its proof ("dpop_mismatch").
    dpop_jkt: str | None = None


@dataclass(frozen=True, slots=True)
class Rotation:
    """What happened. `session` is set for every outcome but "invalid" and "dpop_mismatch";
    after "rotated" and
    "retried" it carries the slid idle deadline, after "reused" the revocation; after
    "limited" and "superseded" nothing changed but the audit row of a "superseded"."""

    outcome: Outcome
    session: SessionState | None = None
    generation: int | None = None  # of the successor ("rotated") or of the presented token
    reuse_class: str | None = None  # "retried", "superseded" and "reused" say which kind


@dataclass(frozen=True, slots=True)
class SessionStart:
    """A login's new session, to start only if the user is as the password check saw it."""

    user_id: uuid.UUID
    password_hash: str  # as read before the hash ran: a change since then starts nothing
    session_id: uuid.UUID
    token_id: uuid.UUID
    token_hash: bytes
    now: datetime
    idle_expires_at: datetime
    absolute_expires_at: datetime
    device_name: str | None
    user_agent: str | None
    ip: str | None
    dpop_jkt: str | None = None  # the key the session is bound to (RFC 9449), if any


@dataclass(frozen=True, slots=True)
class StartedFor:
    """The user as the locked read saw it."""

    email: str
    role: str


class SessionStore(Protocol):
    async def rotate(self, request: RotationRequest) -> Rotation:
        """Rotate a refresh token, retry or detect its reuse: one transaction."""

    async def start(self, start: SessionStart) -> StartedFor | None:
        """Start a session after a password check, or None (nothing written) when the user
        changed, was deactivated or locked meanwhile: the caller's general path decides."""

    async def find_login_candidate(self, email: str) -> UserRecord | None:
        """A login's read of the account before the hash (no transaction held)."""

    async def find_account(self, user_id: uuid.UUID) -> UserRecord | None:
        """The account, read outside any transaction (before a password check)."""

    async def load(self, session_id: uuid.UUID) -> SessionState | None: ...

    async def bound_key(self, session_id: uuid.UUID) -> str | None:
        """The DPoP key (RFC 7638 thumbprint) the session is bound to, if any."""
        ...

    async def slide(
        self,
        session_id: uuid.UUID,
        *,
        now: datetime,
        idle_expires_at: datetime,
        only_if_before: datetime,
    ) -> bool:
        """Move the idle deadline, only when the stored one lags behind `only_if_before`."""

    async def session_of_token(self, token_hash: bytes) -> uuid.UUID | None: ...

    async def find_token_link(self, token_hash: bytes) -> TokenLink | None: ...

    async def count_live(self, now: datetime) -> int: ...

    async def prune(self, now: datetime, used_before: datetime | None) -> tuple[int, int]:
        """Delete dead sessions and old used tokens: (sessions, tokens) deleted."""
