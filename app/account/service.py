"""What a user (or an admin, or the CLI) does to an account that also ends sessions:
password changes, deactivation; and account creation. Passwords are hashed before the unit of
work opens: a hash takes tens of milliseconds, and on SQLite an open transaction holds the one
write lock for all of it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from app.account.errors import PasswordChecksInFlight
from app.audit.service import count_in_session, record
from app.core.client import ClientInfo
from app.core.clock import Clock
from app.core.db import UnitOfWork
from app.core.security import PasswordHasher
from app.core.settings import Settings
from app.sessions.errors import SessionRevoked
from app.sessions.service import SessionService
from app.users import repository, service
from app.users.errors import LastAdmin, PasswordUnchanged, UserNotFound, WrongCurrentPassword
from app.users.repository import UserRecord
from app.users.service import Lockout


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts on an account, for the audit trail."""

    client: ClientInfo
    session_id: uuid.UUID | None = None
    admin_id: uuid.UUID | None = None
    # The operator's CLI has never written audit rows (its shell history is its trail); the
    # API always does.
    audited: bool = True


@dataclass(frozen=True, slots=True)
class PasswordChangeRefused:
    """A wrong current password. Its records (audit, lockout count, perhaps the session's
    end) are in the unit of work, which the caller lets commit: an answer, not an exception."""

    session_ended: bool


def build_account_service(
    settings: Settings, *, passwords: PasswordHasher, sessions: SessionService, clock: Clock
) -> AccountService:
    return AccountService(
        passwords=passwords,
        sessions=sessions,
        clock=clock,
        lockout=Lockout.of(settings),
        max_password_failures=settings.password_change_max_failures,
        roles=frozenset(settings.roles),
    )


class AccountService:
    def __init__(
        self,
        *,
        passwords: PasswordHasher,
        sessions: SessionService,
        clock: Clock,
        lockout: Lockout,
        max_password_failures: int,
        roles: frozenset[str] = frozenset({"user", "admin"}),
    ):
        self._passwords = passwords
        self._sessions = sessions
        self._clock = clock
        self._lockout = lockout
        self._max_password_failures = max_password_failures
        self._roles = roles

    async def create_user(
        self,
        uow: UnitOfWork,
        *,
        email: str,
        password: str,
        role: str = "user",
        now: datetime | None = None,
        verified: bool = True,
    ) -> uuid.UUID:
        """`verified`: an operator's account counts as proven; a registration does not until
        its owner follows an emailed link (REQUIRE_VERIFIED_EMAIL)."""
        email = service.check_email(email)
        role = service.check_role(role, self._roles)  # before the hash and any connection
        password_hash = await service.hash_new_password(self._passwords, password, email=email)
        return await service.insert_new_user(
            await uow.connection(),
            email=email,
            password_hash=password_hash,
            now=now or self._clock.now(),
            role=role,
            verified=verified,
        )

    async def register(
        self, uow: UnitOfWork, client: ClientInfo, email: str, password: str
    ) -> tuple[uuid.UUID, str]:
        """Self-registration; returns the new user's id and stored (normalised) email."""
        now = self._clock.now()
        user_id = await self.create_user(
            uow, email=email, password=password, now=now, verified=False
        )
        await record(
            await uow.connection(),
            "user.registered",
            now=now,
            client=client,
            user_id=user_id,
        )
        return user_id, service.normalize_email(email)

    async def check_password_change(
        self, user_id: uuid.UUID, *, current_password: str, new_password: str
    ) -> None:
        """Refuse what needs no password check: the same password again (the two fields are
        the client's own; saying they are equal tells nothing), or a new one against policy."""
        user = await self._sessions.find_account(user_id)
        if user is None:
            raise UserNotFound()
        if new_password == current_password:
            raise PasswordUnchanged()
        service.check_password_policy(new_password, email=user.email)

    async def reserve_password_check(
        self, uow: UnitOfWork, actor: Actor, user_id: uuid.UUID
    ) -> None:
        """Claim one of the session's password checks, in a unit of work that the caller
        commits before the check runs. Failures are recorded only after a hash, so without a
        claim any number of concurrent guesses would all be checked before the first failure
        counted; with it, at most `max_password_failures` checks that did not change the
        password are ever made in one session."""
        session_id = actor.session_id
        if session_id is None:
            return
        now = self._clock.now()
        if not await self._sessions.lock_live(uow, session_id):
            raise SessionRevoked()
        conn = await uow.connection()
        claimed = await count_in_session(conn, "password.change_attempted", session_id)
        changed = await count_in_session(conn, "password.changed", session_id)
        if claimed - changed >= self._max_password_failures:
            raise PasswordChecksInFlight()
        await record(
            conn,
            "password.change_attempted",
            now=now,
            client=actor.client,
            user_id=user_id,
            session_id=session_id,
        )

    async def change_password(
        self,
        uow: UnitOfWork,
        actor: Actor,
        user_id: uuid.UUID,
        *,
        current_password: str,
        new_password: str,
    ) -> PasswordChangeRefused | None:
        """Check the current password, store the new one, and revoke every other session.

        A wrong current password is a login failure too: it counts toward the account's
        lockout, and after `max_password_failures` of them the session making them ends.
        Call `check_password_change` and `reserve_password_check` first."""
        user = await self._sessions.find_account(user_id)
        if user is None:
            raise UserNotFound()
        valid, _ = await self._passwords.verify_and_update(current_password, user.password_hash)
        if not valid:
            return await self._refuse_current_password(uow, actor, user.id)
        new_hash = await service.hash_new_password(self._passwords, new_password, email=user.email)
        conn = await uow.connection()
        # The check above ran outside any transaction: under the row lock, make sure nobody
        # changed the password meanwhile (else the slower of two changes would silently win).
        locked = await repository.lock_for_login(conn, user.id)
        if locked is None or locked.password_hash != user.password_hash:
            raise WrongCurrentPassword()
        # A guess that was right but slower than the failures that ended its session must
        # not change the password.
        if actor.session_id is not None and not await self._sessions.lock_live(
            uow, actor.session_id
        ):
            raise SessionRevoked()
        await self._replace_password(uow, actor, user, new_hash, keep_session=actor.session_id)
        return None

    async def _refuse_current_password(
        self, uow: UnitOfWork, actor: Actor, user_id: uuid.UUID
    ) -> PasswordChangeRefused:
        now = self._clock.now()
        conn = await uow.connection()
        locked = await repository.lock_for_login(conn, user_id)
        if locked is not None:
            await self._lockout.count_failure(conn, actor.client, locked, now)
        await record(
            conn,
            "password.change_failed",
            now=now,
            client=actor.client,
            user_id=user_id,
            session_id=actor.session_id,
        )
        if actor.session_id is None:
            return PasswordChangeRefused(session_ended=False)
        failures = await count_in_session(conn, "password.change_failed", actor.session_id)
        if failures < self._max_password_failures:
            return PasswordChangeRefused(session_ended=False)
        revoked = await self._sessions.revoke(
            uow, now=now, reason="password_guessing", session_id=actor.session_id
        )
        if not revoked:  # ended meanwhile (a concurrent guess, a logout): nothing to record
            return PasswordChangeRefused(session_ended=True)
        await record(
            conn,
            "session.revoked",
            now=now,
            client=actor.client,
            user_id=user_id,
            session_id=actor.session_id,
            by="password_guessing",
            failures=failures,
        )
        return PasswordChangeRefused(session_ended=True)

    async def set_password(self, uow: UnitOfWork, actor: Actor, email: str, password: str) -> int:
        """An operator's reset: the new password, and every session revoked."""
        new_hash = await service.hash_new_password(
            self._passwords, password, email=service.normalize_email(email)
        )
        user = await service.require_by_email(await uow.connection(), email)
        return await self._replace_password(uow, actor, user, new_hash, keep_session=None)

    async def reset_password(
        self, uow: UnitOfWork, actor: Actor, user: UserRecord, new_hash: str
    ) -> int:
        """A reset by the account's owner (an emailed token): the new password, and every
        session revoked. `new_hash`: hashed by the caller, before its unit of work opened."""
        return await self._replace_password(uow, actor, user, new_hash, keep_session=None)

    async def _replace_password(
        self,
        uow: UnitOfWork,
        actor: Actor,
        user: UserRecord,
        new_hash: str,
        *,
        keep_session: uuid.UUID | None,
    ) -> int:
        now = self._clock.now()
        conn = await uow.connection()
        await service.replace_password_hash(conn, user.id, new_hash, now=now)
        revoked = await self._sessions.revoke(
            uow, now=now, reason="password_changed", user_id=user.id, except_session=keep_session
        )
        if not actor.audited:
            return len(revoked)
        await record(
            conn,
            "password.changed",
            now=now,
            client=actor.client,
            user_id=user.id,
            session_id=actor.session_id,
            sessions_revoked=len(revoked),
        )
        return len(revoked)

    async def set_active(
        self,
        uow: UnitOfWork,
        actor: Actor,
        user_id: uuid.UUID,
        *,
        active: bool,
        allow_no_admin: bool = False,
    ) -> tuple[UserRecord, int]:
        """Activate or deactivate; deactivation revokes every session at once. Returns the
        user as it was, and how many sessions were revoked.

        The last active admin is not deactivated (LastAdmin) unless `allow_no_admin`: the
        operator's CLI may, since the operator can make an admin again from the same shell."""
        now = self._clock.now()
        conn = await uow.connection()
        user = await service.require_by_id(conn, user_id)
        if not (active or allow_no_admin or await service.leaves_an_active_admin(conn, user)):
            raise LastAdmin()
        await repository.set_active(conn, user_id, active=active)
        revoked = []
        if not active:
            revoked = await self._sessions.revoke(
                uow, now=now, reason="user_deactivated", user_id=user_id
            )
        if not actor.audited:
            return user, len(revoked)
        # The admin first, then the count: the order the audit trail has always shown.
        details: dict[str, object] = {} if actor.admin_id is None else {"by": str(actor.admin_id)}
        details["sessions_revoked"] = len(revoked)
        await record(
            conn,
            "user.activated" if active else "user.deactivated",
            now=now,
            client=actor.client,
            user_id=user_id,
            session_id=actor.session_id,
            **details,
        )
        return user, len(revoked)
