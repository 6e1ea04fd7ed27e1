"""What a session is, and the one rule that says whether it may still be used.

The same rule runs in three places that must agree: here (`SessionState.check`), in the
portable store (SQLite) which calls it, and in the PostgreSQL functions (app/sessions/sql/).
tests/sessions/test_store_rules.py runs every rule through both stores.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

# The session's authentication context class (`acr`, docs/mfa.md): a second factor proved within
# STEP_UP_TTL, or not.
ACR_MFA = "mfa"
ACR_SINGLE_FACTOR = "pwd"


class Unusable(StrEnum):
    """Why a session may not be used, in the order the rule checks."""

    revoked = "revoked"
    user_inactive = "user_inactive"
    absolute_deadline = "absolute_deadline"
    idle_deadline = "idle_deadline"

    @property
    def is_expiry(self) -> bool:
        return self in (Unusable.absolute_deadline, Unusable.idle_deadline)


@dataclass(frozen=True, slots=True)
class SessionState:
    """A session joined with what decides whether it may still be used."""

    id: uuid.UUID
    user_id: uuid.UUID
    email: str
    role: str
    user_active: bool
    created_at: datetime
    idle_expires_at: datetime
    absolute_expires_at: datetime
    revoked_at: datetime | None
    # How and when the user proved who they are (docs/mfa.md): RFC 8176 methods, space
    # separated (None: a password session), when the login's first factor was checked (None:
    # when the session was created), when a second factor last was (a two-step login, or a
    # step-up).
    amr: str | None = None
    auth_time: datetime | None = None
    factor_at: datetime | None = None

    @property
    def methods(self) -> list[str]:
        return (self.amr or "pwd").split()

    @property
    def authenticated_at(self) -> datetime:
        return self.auth_time or self.created_at

    @property
    def last_authenticated_at(self) -> datetime:
        """The latest time the user proved who they are: the login, or a later second factor
        (a step-up). What an access token's `auth_time` says, so that a resource server
        checking RFC 9470's max_age accepts a session that just stepped up."""
        if self.factor_at is None:
            return self.authenticated_at
        return max(self.authenticated_at, self.factor_at)

    def factor_fresh_until(self, fresh_for: timedelta) -> datetime | None:
        """Until when the last second factor counts as recent (None: never proved one)."""
        return self.factor_at + fresh_for if self.factor_at is not None else None

    def has_recent_factor(self, now: datetime, fresh_for: timedelta) -> bool:
        until = self.factor_fresh_until(fresh_for)
        return until is not None and now < until

    def acr(self, now: datetime, fresh_for: timedelta) -> str:
        return ACR_MFA if self.has_recent_factor(now, fresh_for) else ACR_SINGLE_FACTOR

    def check(self, now: datetime) -> Unusable | None:
        """None if the session may be used at `now`, else why not."""
        if self.revoked_at is not None:
            return Unusable.revoked
        if not self.user_active:
            return Unusable.user_inactive
        if now >= self.absolute_expires_at:
            return Unusable.absolute_deadline
        if now >= self.idle_expires_at:
            return Unusable.idle_deadline
        return None

    def is_usable_at(self, now: datetime) -> bool:
        return self.check(now) is None


@dataclass(frozen=True, slots=True)
class AuthContext:
    """How a login proved the user (docs/mfa.md): a session started with it records it."""

    amr: str  # RFC 8176 methods, space separated
    auth_time: datetime  # when the first factor was checked
    factor_at: datetime | None  # when a second factor was


@dataclass(frozen=True, slots=True)
class TokenLink:
    """A refresh token row, its session's state, and its successor (if it has been rotated)."""

    id: uuid.UUID
    generation: int
    used_at: datetime | None
    session: SessionState
    successor_id: uuid.UUID | None
    successor_used_at: datetime | None

    @property
    def is_newest_parent(self) -> bool:
        """Rotated once, and its successor not yet used: the parent of the session's newest
        token (a replay of it inside the reuse interval is a retry)."""
        return self.successor_id is not None and self.successor_used_at is None


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    idle_timeout: timedelta
    absolute_lifetime: timedelta
    touch_interval: timedelta
    reuse_interval: timedelta

    def new_deadlines(self, now: datetime) -> tuple[datetime, datetime]:
        absolute = now + self.absolute_lifetime
        return min(now + self.idle_timeout, absolute), absolute

    def slid_deadline(self, state: SessionState, now: datetime) -> datetime:
        return min(now + self.idle_timeout, state.absolute_expires_at)

    def credited_arrival(self, arrived_at: datetime | None, now: datetime) -> datetime:
        """The instant a refresh is measured from against the reuse interval: when it arrived,
        so that waiting in a busy worker does not turn a genuine retry into theft. The wait is
        credited up to one reuse interval: a request whose body trickles in for longer must
        not stretch the window a thief gets (docs/refresh-rotation.md)."""
        if arrived_at is None:
            return now
        return min(now, max(arrived_at, now - self.reuse_interval))

    def is_retry(self, link: TokenLink, arrived_at: datetime) -> bool:
        """The newest used token, presented again within the reuse interval: a retry or a
        race, answered with the same successor."""
        return self._inside_reuse_interval(link, arrived_at) and link.is_newest_parent

    def is_superseded(self, link: TokenLink, arrived_at: datetime) -> bool:
        """An older used token (its successor was used too), arriving within the reuse interval
        of its own first use: a delayed duplicate of a request the client has since retried
        and moved on from. Refused, but not theft. Anything else used is a replay (theft)."""
        return self._inside_reuse_interval(link, arrived_at) and not link.is_newest_parent

    def _inside_reuse_interval(self, link: TokenLink, arrived_at: datetime) -> bool:
        return link.used_at is not None and arrived_at - link.used_at <= self.reuse_interval
