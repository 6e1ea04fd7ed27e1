"""Login, refresh rotation, logout: the rules, with no HTTP in sight."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from app.audit.service import ClientInfo, announce, record
from app.auth.errors import (
    CsrfFailed,
    InvalidCredentials,
    RefreshTokenInvalid,
)
from app.auth.tokens import IssuedAccessToken
from app.context import AppContext, forget_sessions_after_commit
from app.core.db import UnitOfWork, on_asyncpg
from app.sessions import repository as sessions
from app.sessions import start
from app.sessions.repository import SessionState, TokenLink
from app.users import repository as users
from app.users.repository import UserRecord
from app.users.service import normalize_email


@dataclass(frozen=True, slots=True)
class TokenGrant:
    access: IssuedAccessToken
    refresh_token: str
    session: SessionState
    now: datetime

    @property
    def refresh_expires_in(self) -> int:
        deadline = min(self.session.idle_expires_at, self.session.absolute_expires_at)
        return max(0, int((deadline - self.now).total_seconds()))


def issue_grant(
    ctx: AppContext, state: SessionState, refresh_token: str, now: datetime
) -> TokenGrant:
    access = ctx.access_codec.issue(
        user_id=state.user_id,
        session_id=state.id,
        role=state.role,
        now=now,
        not_after=state.absolute_expires_at,
    )
    return TokenGrant(access=access, refresh_token=refresh_token, session=state, now=now)


class AuthService:
    def __init__(self, ctx: AppContext, uow: UnitOfWork, client: ClientInfo) -> None:
        self._ctx = ctx
        self._uow = uow
        self._client = client

    async def login(self, email: str, password: str, device_name: str | None) -> TokenGrant:
        candidate = await users.find_login_candidate(self._ctx.engine, normalize_email(email))
        # No connection is held while the hash runs (it takes tens of milliseconds).
        valid, new_hash = await self._ctx.passwords.verify_and_update(
            password, candidate.password_hash if candidate else None
        )
        now = self._ctx.clock.now()
        if valid and new_hash is None and candidate is not None and _looked_usable(candidate, now):
            grant = await self._start_in_one_trip(candidate, device_name, now)
            if grant is not None:
                return grant
        conn = await self._uow.connection()
        user = await users.lock_for_login(conn, candidate.id) if candidate else None
        unchanged = (
            user is not None
            and candidate is not None
            and user.password_hash == candidate.password_hash
        )
        locked = user is not None and user.locked_until is not None and user.locked_until > now
        if user is None or not valid or not unchanged or not user.is_active or locked:
            reason = _failure_reason(user, valid=valid, unchanged=unchanged, locked=locked)
            if user is not None and reason == "wrong_password":
                await self._count_failure(conn, user, now)
            await self._audit(
                "login.failed", now, user_id=candidate.id if candidate else None, reason=reason
            )
            raise InvalidCredentials()
        if user.failed_logins or user.locked_until:
            await users.reset_login_failures(conn, user.id)
        if new_hash is not None:
            await users.set_password_hash(conn, user.id, new_hash, now=None)
        return await self._start_session(conn, user, device_name, now)

    async def _count_failure(self, conn: AsyncConnection, user: UserRecord, now: datetime) -> None:
        """Lock after LOCKOUT_THRESHOLD consecutive failures, for a time that doubles with each
        further failure up to a cap: a guesser is slowed exponentially, whatever IPs it uses,
        while the real user is never locked out for long."""
        settings = self._ctx.settings
        failed = user.failed_logins + 1
        locked_until = None
        if failed >= settings.lockout_threshold:
            doublings = min(failed - settings.lockout_threshold, 20)
            seconds = min(
                settings.lockout_base_seconds * 2**doublings, settings.lockout_max_seconds
            )
            locked_until = now + timedelta(seconds=seconds)
            await self._audit(
                "account.locked", now, user_id=user.id, failures=failed, seconds=seconds
            )
        await users.record_login_failure(
            conn, user.id, failed_logins=failed, locked_until=locked_until
        )

    async def _start_in_one_trip(
        self, candidate: UserRecord, device_name: str | None, now: datetime
    ) -> TokenGrant | None:
        """The common login (right password, hash current) on PostgreSQL, in one round trip;
        None when that isn't possible or the user changed meanwhile: then the general path
        decides."""
        if not on_asyncpg(self._ctx.engine):
            return None
        session_id = uuid.uuid4()
        idle, absolute = self._ctx.policy.new_deadlines(now)
        refresh_token = self._ctx.refresh_codec.new_token(session_id)
        started = await start.start_session(
            self._ctx.engine,
            start.SessionStart(
                user_id=candidate.id,
                password_hash=candidate.password_hash,
                session_id=session_id,
                token_id=uuid.uuid4(),
                token_hash=self._ctx.refresh_codec.hash(refresh_token),
                now=now,
                idle_expires_at=idle,
                absolute_expires_at=absolute,
                device_name=device_name,
                user_agent=self._client.stored_user_agent,
                ip=self._client.ip,
            ),
        )
        if started is None:
            return None
        announce(
            "login.succeeded", client=self._client, user_id=candidate.id, session_id=session_id
        )
        state = _new_session_state(
            session_id, candidate.id, started.email, started.role, now, idle, absolute
        )
        return issue_grant(self._ctx, state, refresh_token, now)

    async def _start_session(
        self, conn: AsyncConnection, user: UserRecord, device_name: str | None, now: datetime
    ) -> TokenGrant:
        session_id = uuid.uuid4()
        idle, absolute = self._ctx.policy.new_deadlines(now)
        await sessions.insert_session(
            conn,
            session_id=session_id,
            user_id=user.id,
            device_name=device_name,
            user_agent=self._client.stored_user_agent,
            ip=self._client.ip,
            now=now,
            idle_expires_at=idle,
            absolute_expires_at=absolute,
        )
        refresh_token = self._ctx.refresh_codec.new_token(session_id)
        await sessions.insert_refresh_token(
            conn,
            session_id=session_id,
            token_hash=self._ctx.refresh_codec.hash(refresh_token),
            parent_id=None,
            generation=1,
            now=now,
        )
        state = _new_session_state(session_id, user.id, user.email, user.role, now, idle, absolute)
        await self._audit("login.succeeded", now, user_id=user.id, session_id=session_id)
        return issue_grant(self._ctx, state, refresh_token, now)

    async def _locked_link(
        self, conn: AsyncConnection, refresh_token: str, csrf_token: str | None
    ) -> TokenLink:
        token_hash = self._ctx.refresh_codec.hash(refresh_token)
        # The session lock orders this logout after any refresh of the session in flight, and
        # takes locks in the same order as every other writer of a session.
        if not await sessions.lock_session_of_token(conn, token_hash):
            raise RefreshTokenInvalid()
        link = await sessions.find_token_link(conn, token_hash)
        if link is None:  # pragma: no cover - pruned between the two statements
            raise RefreshTokenInvalid()
        if csrf_token is not None and not self._ctx.csrf_codec.matches(link.session.id, csrf_token):
            raise CsrfFailed()
        return link

    async def logout(self, session_id: uuid.UUID, user_id: uuid.UUID) -> None:
        now = self._ctx.clock.now()
        conn = await self._uow.connection()
        await sessions.revoke_sessions(conn, now=now, reason="logout", session_id=session_id)
        forget_sessions_after_commit(self._ctx, self._uow)
        await self._audit("logout", now, user_id=user_id, session_id=session_id, scope="session")

    async def logout_with_refresh_token(self, refresh_token: str, csrf_token: str) -> None:
        """Cookie logout without an access token (it may have expired): the refresh cookie
        names the session, the CSRF token proves the request comes from our page."""
        conn = await self._uow.connection()
        link = await self._locked_link(conn, refresh_token, csrf_token)
        await self.logout(link.session.id, link.session.user_id)

    async def logout_all(self, user_id: uuid.UUID, current_session_id: uuid.UUID) -> int:
        now = self._ctx.clock.now()
        conn = await self._uow.connection()
        revoked = await sessions.revoke_sessions(
            conn, now=now, reason="logout_all", user_id=user_id
        )
        forget_sessions_after_commit(self._ctx, self._uow)
        await self._audit(
            "logout",
            now,
            user_id=user_id,
            session_id=current_session_id,
            scope="all",
            sessions_revoked=len(revoked),
        )
        return len(revoked)

    async def _audit(
        self,
        event: str,
        now: datetime,
        *,
        user_id: uuid.UUID | None = None,
        session_id: uuid.UUID | None = None,
        **details: object,
    ) -> None:
        await record(
            await self._uow.connection(),
            event,
            now=now,
            client=self._client,
            user_id=user_id,
            session_id=session_id,
            **details,
        )


def _looked_usable(candidate: UserRecord, now: datetime) -> bool:
    """Whether the user, as read before the hash, could log in. Only then is the one-round-trip
    start tried: a locked or deactivated account must take the same path, and the same time,
    whether the password was right or not (else timing tells a guesser during a lockout)."""
    locked = candidate.locked_until is not None and candidate.locked_until > now
    return candidate.is_active and not locked


def _new_session_state(
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    email: str,
    role: str,
    now: datetime,
    idle_expires_at: datetime,
    absolute_expires_at: datetime,
) -> SessionState:
    return SessionState(
        id=session_id,
        user_id=user_id,
        email=email,
        role=role,
        user_active=True,
        created_at=now,
        idle_expires_at=idle_expires_at,
        absolute_expires_at=absolute_expires_at,
        revoked_at=None,
    )


def _failure_reason(user: UserRecord | None, *, valid: bool, unchanged: bool, locked: bool) -> str:
    if user is None:
        return "unknown_user"
    if locked:
        return "locked"
    if not valid:
        return "wrong_password"
    if not unchanged:
        return "password_changed_during_login"
    return "inactive"
