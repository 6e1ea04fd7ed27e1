"""Your second factors, inside your session: enrol an authenticator app, turn factors off, new
recovery codes, and step-up (prove a factor again to raise the session's acr). No HTTP.

A factor checked here is one more guess at the account: rate limited per session
(RATE_LIMIT_STEP_UP_SESSION) and, when wrong, counted toward the account's lockout like a wrong
password, with its audit row. Those records are returned with the refusal, not rolled back by
an exception, so they commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from app.audit.service import record
from app.auth.grants import access_token_for
from app.auth.tokens import AccessTokenCodec, IssuedAccessToken
from app.core.client import ClientInfo
from app.core.clock import Clock
from app.core.db import UnitOfWork
from app.core.ratelimit import RateLimiter
from app.core.security import PasswordHasher
from app.mfa.errors import InsufficientAuthentication, InvalidFactorCode, PasskeyNotFound
from app.mfa.passkeys import STEP_UP, Ceremony, PasskeyProof
from app.mfa.repository import StoredPasskey
from app.mfa.service import (
    DISABLED_NOTICE_TEMPLATE,
    PASSKEY_NOTICE_TEMPLATE,
    FactorProof,
    FactorStatus,
    SecondFactors,
    TotpEnrolment,
)
from app.sessions.policy import SessionState
from app.sessions.service import SessionService
from app.users import repository as users
from app.users.service import Lockout


@dataclass(frozen=True, slots=True)
class FactorRefused:
    """A factor that did not check out; its records (audit, lockout count) are in the unit of
    work, which the caller lets commit."""


@dataclass(frozen=True, slots=True)
class SteppedUp:
    access: IssuedAccessToken  # for the raised session (the refresh token is unchanged)
    session: SessionState
    jkt: str | None  # the DPoP key the token is bound to, as the one it replaces was
    acr: str
    acr_expires_at: datetime


class AccountFactors:
    def __init__(
        self,
        *,
        factors: SecondFactors,
        sessions: SessionService,
        passwords: PasswordHasher,
        access: AccessTokenCodec,
        limiter: RateLimiter,
        lockout: Lockout,
        clock: Clock,
        step_up_ttl: timedelta,
    ) -> None:
        self._factors = factors
        self._sessions = sessions
        self._passwords = passwords
        self._access = access
        self._limiter = limiter
        self._lockout = lockout
        self._clock = clock
        self.step_up_ttl = step_up_ttl

    async def status(self, uow: UnitOfWork, state: SessionState) -> FactorStatus:
        return await self._factors.status(await uow.connection(), state.user_id)

    async def begin_totp(
        self, uow: UnitOfWork, client: ClientInfo, state: SessionState, password: str
    ) -> TotpEnrolment | FactorRefused:
        """A new secret for an authenticator app, for the account's password (ASVS 5 V7.5.1:
        a session alone, perhaps a stolen one, must not add a factor the owner would then need).
        A wrong password counts toward the lockout like a wrong code."""
        if not await self._password_checks_out(uow, client, state, password):
            return await self._refused(uow, client, state, self._clock.now(), "enrol_password")
        await self._require_factor_for_another(uow, state)
        conn = await uow.connection()
        return await self._factors.begin_totp(conn, state.user_id, state.email, self._clock.now())

    async def _password_checks_out(
        self, uow: UnitOfWork, client: ClientInfo, state: SessionState, password: str
    ) -> bool:
        await self._limiter.hit("step_up_session", str(state.id))
        account = await self._sessions.find_account(state.user_id)
        # No connection is held while the hash runs.
        valid, _ = await self._passwords.verify_and_update(
            password, account.password_hash if account else None
        )
        return valid

    async def begin_passkey(
        self, uow: UnitOfWork, client: ClientInfo, state: SessionState, password: str, name: str
    ) -> Ceremony | FactorRefused:
        """Options for registering a passkey, for the account's password (as an app's
        enrolment: a session alone adds no factor)."""
        if not await self._password_checks_out(uow, client, state, password):
            return await self._refused(uow, client, state, self._clock.now(), "enrol_password")
        await self._require_factor_for_another(uow, state)
        conn = await uow.connection()
        now = self._clock.now()
        return await self._factors.passkeys.registration(
            conn, state.user_id, state.email, name, now
        )

    async def _require_factor_for_another(self, uow: UnitOfWork, state: SessionState) -> None:
        """An account with a second factor adds another only from a session that proved one
        recently (a step-up): the password and a session alone, perhaps a thief's, must not buy
        a factor that gets past the one the owner has."""
        status = await self._factors.status(await uow.connection(), state.user_id)
        if status.totp or status.passkeys:
            self.require_recent_factor(state)

    async def register_passkey(
        self, uow: UnitOfWork, client: ClientInfo, state: SessionState, proof: PasskeyProof
    ) -> StoredPasskey:
        """The registration's answer: the passkey is the account's (a second factor from now
        on, and a passwordless login). The owner is told."""
        now = self._clock.now()
        conn = await uow.connection()
        passkey = await self._factors.passkeys.register(
            conn, client, state.user_id, state.id, proof, now
        )
        await self._factors.factors_changed(conn, state.user_id)
        await self._factors.notify(conn, state.user_id, PASSKEY_NOTICE_TEMPLATE, now)
        return passkey

    async def passkeys(self, uow: UnitOfWork, state: SessionState) -> list[StoredPasskey]:
        return await self._factors.passkeys.list(await uow.connection(), state.user_id)

    async def rename_passkey(
        self, uow: UnitOfWork, state: SessionState, passkey_id: uuid.UUID, name: str
    ) -> None:
        conn = await uow.connection()
        if not await self._factors.passkeys.rename(conn, state.user_id, passkey_id, name):
            raise PasskeyNotFound()

    async def delete_passkey(
        self, uow: UnitOfWork, client: ClientInfo, state: SessionState, passkey_id: uuid.UUID
    ) -> None:
        """Removing a factor needs one proved recently (InsufficientAuthentication otherwise);
        the last factor gone, logins take the password alone. The owner is told."""
        self.require_recent_factor(state)
        now = self._clock.now()
        conn = await uow.connection()
        if not await self._factors.passkeys.delete(conn, state.user_id, passkey_id):
            raise PasskeyNotFound()
        await record(
            conn,
            "passkey.deleted",
            now=now,
            client=client,
            user_id=state.user_id,
            session_id=state.id,
            passkey_id=str(passkey_id),
        )
        await self._factors.factors_changed(conn, state.user_id)
        await self._factors.notify(conn, state.user_id, DISABLED_NOTICE_TEMPLATE, now)

    async def step_up_options(self, uow: UnitOfWork, state: SessionState) -> Ceremony:
        await self._limiter.hit("step_up_session", str(state.id))
        conn = await uow.connection()
        return await self._factors.passkeys.assertion(
            conn, STEP_UP, state.user_id, self._clock.now()
        )

    async def confirm_totp(
        self, uow: UnitOfWork, client: ClientInfo, state: SessionState, code: str
    ) -> list[str] | FactorRefused:
        """The enrolment's first code: the factor is on; returns the recovery codes. The session
        is not raised to acr "mfa" by it: a factor enrolled in a session proves nothing about
        that session (a step-up does, from the next code on)."""
        await self._limiter.hit("step_up_session", str(state.id))
        now = self._clock.now()
        conn = await uow.connection()
        try:
            codes = await self._factors.confirm_totp(
                conn, client, state.user_id, state.id, code, now
            )
        except InvalidFactorCode:
            return await self._refused(uow, client, state, now, "confirm")
        return codes

    async def disable(
        self, uow: UnitOfWork, client: ClientInfo, state: SessionState, proof: FactorProof
    ) -> FactorRefused | None:
        await self._limiter.hit("step_up_session", str(state.id))
        now = self._clock.now()
        conn = await uow.connection()
        try:
            await self._factors.disable(conn, client, state.user_id, state.id, proof, now)
        except InvalidFactorCode:
            return await self._refused(uow, client, state, now, "disable")
        return None

    async def regenerate_recovery_codes(
        self, uow: UnitOfWork, client: ClientInfo, state: SessionState, proof: FactorProof
    ) -> list[str] | FactorRefused:
        await self._limiter.hit("step_up_session", str(state.id))
        now = self._clock.now()
        conn = await uow.connection()
        try:
            return await self._factors.regenerate_recovery_codes(
                conn, client, state.user_id, state.id, proof, now
            )
        except InvalidFactorCode:
            return await self._refused(uow, client, state, now, "regenerate")

    async def step_up(
        self,
        uow: UnitOfWork,
        client: ClientInfo,
        state: SessionState,
        proof: FactorProof,
        jkt: str | None,
    ) -> SteppedUp | FactorRefused:
        """Prove a factor again inside the live session: its acr is "mfa" for STEP_UP_TTL, and
        a new access token says so (the refresh token is unchanged)."""
        await self._limiter.hit("step_up_session", str(state.id))
        now = self._clock.now()
        conn = await uow.connection()
        try:
            proved = await self._factors.verify(
                conn, client, state.user_id, state.id, proof, now, purpose="step_up"
            )
        except InvalidFactorCode:
            return await self._refused(uow, client, state, now, "step_up")
        raised = await self._sessions.record_factor(uow, state, [proved.amr, "mfa"], now)
        await record(
            conn,
            "mfa.step_up",
            now=now,
            client=client,
            user_id=state.user_id,
            session_id=state.id,
            method=proved.factor,
        )
        access = access_token_for(self._access, raised, now, jkt)
        ttl = self.step_up_ttl
        return SteppedUp(access, raised, jkt, raised.acr(now, ttl), now + ttl)

    def require_recent_factor(self, state: SessionState) -> None:
        """InsufficientAuthentication unless the session proved a second factor within
        STEP_UP_TTL (RFC 9470: the response says what to do)."""
        now = self._clock.now()
        if state.has_recent_factor(now, self.step_up_ttl):
            return
        seconds = int(self.step_up_ttl.total_seconds())
        raise InsufficientAuthentication(
            "This needs a second factor proved in the last "
            f"{seconds} seconds: POST /auth/step-up with a TOTP code, a recovery code or a "
            "passkey (its options: POST /auth/step-up/passkey-options). An account without one "
            "adds one first, with its password: POST /auth/mfa/totp or "
            "POST /auth/passkeys/register/options.",
            max_age=seconds,
        )

    async def _refused(
        self, uow: UnitOfWork, client: ClientInfo, state: SessionState, now: datetime, purpose: str
    ) -> FactorRefused:
        conn = await uow.connection()
        user = await users.lock_for_login(conn, state.user_id)
        if user is not None:
            await self._lockout.count_failure(conn, client, user, now)
        await record(
            conn,
            "mfa.check_failed",
            now=now,
            client=client,
            user_id=state.user_id,
            session_id=state.id,
            purpose=purpose,
        )
        return FactorRefused()
