"""What a login or a refresh hands out: an access token for a session and its refresh token."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from app.auth.tokens import AccessTokenCodec, IssuedAccessToken
from app.sessions.policy import SessionState
from app.sessions.service import IssuedSession


@dataclass(frozen=True, slots=True)
class TokenGrant:
    access: IssuedAccessToken
    refresh_token: str
    session: SessionState
    now: datetime
    # Logins only: the client's device token for the account (see app.auth.devices).
    device_token: str | None = None
    # The DPoP key the access token is bound to (its `cnf.jkt`), if any.
    jkt: str | None = None

    @property
    def token_type(self) -> Literal["Bearer", "DPoP"]:
        """How the access token is presented (RFC 9449 §5): a bound one needs its proofs."""
        return "DPoP" if self.jkt is not None else "Bearer"

    @property
    def refresh_expires_in(self) -> int:
        return seconds_until(
            min(self.session.idle_expires_at, self.session.absolute_expires_at), self.now
        )

    @property
    def refresh_after(self) -> datetime:
        return refresh_after(self.now, self.access.expires_at, self.session.idle_expires_at)


def grant_for(codec: AccessTokenCodec, issued: IssuedSession, jkt: str | None) -> TokenGrant:
    """`jkt`: the key of the request's DPoP proof. The store has checked that a bound session's
    proof is by its own key, and bound a session that was not bound to it (RFC 9449 §5)."""
    state, now = issued.session, issued.now
    access = access_token_for(codec, state, now, jkt)
    return TokenGrant(
        access=access, refresh_token=issued.refresh_token, session=state, now=now, jkt=jkt
    )


def access_token_for(
    codec: AccessTokenCodec, state: SessionState, now: datetime, jkt: str | None
) -> IssuedAccessToken:
    """An access token for the session as it stands (its role, deadline and authentication
    context), bound to `jkt` if given."""
    return codec.issue(
        user_id=state.user_id,
        session_id=state.id,
        role=state.role,
        now=now,
        not_after=state.absolute_expires_at,
        jkt=jkt,
        session=state,
    )


def refresh_after(issued_at: datetime, expires_at: datetime, idle_expires_at: datetime) -> datetime:
    """Refresh once four fifths of the way to the nearer of the token's expiry and the session's
    idle deadline: early enough to absorb a slow network, late enough not to rotate needlessly.
    The idle deadline counts because a token may outlive it (a 30 s token, a 10 s idle timeout):
    a client waiting for the token's four fifths would find its session already expired."""
    deadline = min(expires_at, idle_expires_at)
    return min(deadline, deadline - (deadline - issued_at) / 5)


def seconds_until(moment: datetime, now: datetime) -> int:
    return max(0, int((moment - now).total_seconds()))
