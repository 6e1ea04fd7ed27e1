"""Credentials to sessions: login (with lockout), refresh, logout. No HTTP in sight; the
session rules themselves are the session service's."""

from __future__ import annotations

import hmac
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from app.audit.service import record
from app.auth.devices import DeviceProof, DeviceTokenCodec
from app.auth.grants import TokenGrant, grant_for
from app.auth.tokens import AccessTokenCodec
from app.core.client import ClientInfo
from app.core.clock import Clock
from app.core.db import UnitOfWork
from app.core.ratelimit import RateLimiter
from app.core.security import PasswordHasher
from app.mfa.errors import InvalidFactorCode, MfaNotEnabled
from app.mfa.passkeys import LOGIN, SECOND_FACTOR, Ceremony, PasskeyProof
from app.mfa.repository import StoredChallenge
from app.mfa.service import FactorProof, SecondFactors
from app.sessions.policy import AuthContext
from app.sessions.service import IssuedSession, SessionGuard, SessionService
from app.users import repository as users
from app.users.repository import UserRecord
from app.users.service import Lockout, normalize_email


@dataclass(frozen=True, slots=True)
class MfaChallenge:
    """A right password for an account with a second factor: no session yet, a challenge to
    answer at /auth/login/mfa (docs/mfa.md). Its records are in the unit of work."""

    token: str
    methods: tuple[str, ...]
    expires_in: int


@dataclass(frozen=True, slots=True)
class LoginRefused:
    """A refused login. Its records (audit, failure count) are in the unit of work, which the
    caller lets commit: the refusal is an answer, not an exception."""

    reason: str


class UnverifiedLogin(Protocol):
    """What a login of an account whose address is unproven does besides refusing (with
    REQUIRE_VERIFIED_EMAIL: send a fresh link; app.recovery.verification)."""

    async def on_unverified_login(
        self, uow: UnitOfWork, client: ClientInfo, user: UserRecord, now: datetime
    ) -> None: ...


class AuthService:
    def __init__(
        self,
        *,
        sessions: SessionService,
        passwords: PasswordHasher,
        access: AccessTokenCodec,
        clock: Clock,
        lockout: Lockout,
        devices: DeviceTokenCodec,
        limiter: RateLimiter,
        factors: SecondFactors,
        unverified: UnverifiedLogin | None = None,
    ) -> None:
        self._factors = factors
        self._unverified = unverified
        self._sessions = sessions
        self._passwords = passwords
        self._access = access
        self._clock = clock
        self._lockout = lockout
        self._devices = devices
        self._limiter = limiter

    def device_proof(self, device_token: str | None, email: str) -> DeviceProof | None:
        """What a presented device token proves for a login with `email` (None: nothing)."""
        return self._devices.read(device_token, email=normalize_email(email), now=self._clock.now())

    async def login(
        self,
        uow: UnitOfWork,
        client: ClientInfo,
        email: str,
        password: str,
        device_name: str | None,
        device: DeviceProof | None = None,
        *,
        dpop_jkt: str | None = None,
    ) -> TokenGrant | MfaChallenge | LoginRefused:
        """`dpop_jkt`: the DPoP key the request proved (RFC 9449); the session is bound to it.
        An account with a second factor gets a challenge instead of a session."""
        candidate = await self._sessions.find_login_candidate(normalize_email(email))
        # No connection is held while the hash runs (it takes tens of milliseconds).
        valid, new_hash = await self._passwords.verify_and_update(
            password, candidate.password_hash if candidate else None
        )
        now = self._clock.now()
        trusted = await self._trusts(device, candidate)
        if (
            valid
            and new_hash is None
            and candidate is not None
            and _looked_usable(candidate, now)
            and not candidate.mfa_enabled
            # The one-trip start clears the account's failures (as read now, not as seen
            # before the hash): never the owner's device's job, so it takes the general path.
            and not trusted
            # An address still to prove is refused on the general path (with a fresh link).
            and (self._unverified is None or candidate.email_verified_at is not None)
        ):
            issued = await self._sessions.start(candidate, client, device_name, now, dpop_jkt)
            if issued is not None:
                return self._granted(issued, candidate, device if trusted else None, dpop_jkt)
        # The general path: anything unusual (a failure, a hash upgrade, a change meanwhile),
        # decided under the user's row lock inside the request's unit of work.
        conn = await uow.connection()
        user = await users.lock_for_login(conn, candidate.id) if candidate else None
        unchanged = (
            user is not None
            and candidate is not None
            and user.password_hash == candidate.password_hash
        )
        # A trusted device is exempt from the account's lock (which anyone may keep in force).
        locked = user is not None and user.is_locked_at(now) and not trusted
        if user is None or not valid or not unchanged or not user.is_active or locked:
            reason = _failure_reason(user, valid=valid, unchanged=unchanged, locked=locked)
            if user is not None and reason == "wrong_password":
                await self._count_failure(conn, client, user, now, device if trusted else None)
            details: dict[str, Any] = {"device": "trusted"} if trusted else {}
            await record(
                conn,
                "login.failed",
                now=now,
                client=client,
                user_id=candidate.id if candidate else None,
                reason=reason,
                **details,
            )
            return LoginRefused(reason)
        # The account's failures are untrusted clients' guesses: the owner's device logging
        # in neither lifts their lock nor gives them a fresh count. Nor does a password alone,
        # where a second factor is owed: the count must keep running across challenges.
        if (user.failed_logins or user.locked_until) and not trusted and not user.mfa_enabled:
            await users.reset_login_failures(conn, user.id)
        if new_hash is not None:
            await users.set_password_hash(conn, user.id, new_hash, now=None)
            user = replace(user, password_hash=new_hash)
        # The right password: the owner (or someone who knows it) learns only that the address
        # needs proving, and the link goes to the address.
        if (unproven := await self._unproven_address(uow, client, user, now)) is not None:
            return unproven
        if user.mfa_enabled:
            return await self._challenge(conn, client, user, device_name, dpop_jkt, now)
        issued = await self._sessions.start_in(uow, user, client, device_name, now, dpop_jkt)
        return self._granted(issued, user, device if trusted else None, dpop_jkt)

    async def _challenge(
        self,
        conn: AsyncConnection,
        client: ClientInfo,
        user: UserRecord,
        device_name: str | None,
        dpop_jkt: str | None,
        now: datetime,
    ) -> MfaChallenge:
        token = await self._factors.open_challenge(
            conn,
            user_id=user.id,
            password_hash=user.password_hash,
            device_name=device_name,
            dpop_jkt=dpop_jkt,
            now=now,
        )
        await record(conn, "login.mfa_required", now=now, client=client, user_id=user.id)
        ttl = int(self._factors.challenge_ttl.total_seconds())
        methods = (await self._factors.status(conn, user.id)).methods
        return MfaChallenge(token, methods, ttl)

    async def passkey_options_for_challenge(
        self, uow: UnitOfWork, challenge_token: str
    ) -> Ceremony | LoginRefused:
        """A passkey assertion's options for a login's second step: the account's passkeys."""
        now = self._clock.now()
        conn = await uow.connection()
        challenge = await self._factors.take_challenge(conn, challenge_token)
        if challenge is None or not challenge.is_answerable_at(now):
            return LoginRefused("challenge_invalid")
        return await self._factors.passkeys.assertion(conn, SECOND_FACTOR, challenge.user_id, now)

    async def passkey_login_options(self, uow: UnitOfWork) -> Ceremony:
        conn = await uow.connection()
        return await self._factors.passkeys.assertion(conn, LOGIN, None, self._clock.now())

    async def login_passkey(
        self,
        uow: UnitOfWork,
        client: ClientInfo,
        proof: PasskeyProof,
        device_name: str | None,
        *,
        dpop_jkt: str | None = None,
    ) -> TokenGrant | LoginRefused:
        """A passwordless login: a discoverable passkey's assertion, with user verification,
        is both factors (possession and the device's PIN or biometric). The account's password
        lockout does not apply (a passkey is not guessed); a deactivated account is refused."""
        now = self._clock.now()
        conn = await uow.connection()
        try:
            asserted = await self._factors.passkeys.verify(conn, client, proof, now, purpose=LOGIN)
        except InvalidFactorCode:
            await record(conn, "login.failed", now=now, client=client, reason="passkey_refused")
            return LoginRefused("passkey_refused")
        user = await users.lock_for_login(conn, asserted.user_id)
        if user is None or not user.is_active:
            await record(
                conn,
                "login.failed",
                now=now,
                client=client,
                user_id=asserted.user_id,
                reason="inactive",
            )
            return LoginRefused("inactive")
        if (unproven := await self._unproven_address(uow, client, user, now)) is not None:
            return unproven
        context = AuthContext(amr=f"{asserted.method} user mfa", auth_time=now, factor_at=now)
        issued = await self._sessions.start_in(
            uow, user, client, device_name, now, dpop_jkt, context
        )
        return self._granted(issued, user, None, dpop_jkt)

    async def login_mfa(
        self,
        uow: UnitOfWork,
        client: ClientInfo,
        challenge_token: str,
        proof: FactorProof,
        *,
        dpop_jkt: str | None = None,
    ) -> TokenGrant | LoginRefused:
        """The second step: the challenge answered with a factor starts the session. A wrong
        code counts toward the account's lockout and the challenge's own attempts; the
        request must prove the DPoP key of the first step, if it proved one."""
        now = self._clock.now()
        conn = await uow.connection()
        challenge = await self._factors.take_challenge(conn, challenge_token)
        if challenge is None:
            return await _mfa_failed(conn, client, None, "no_challenge", now)
        await self._limiter.hit("login_mfa_account", str(challenge.user_id))
        if not challenge.is_answerable_at(now):
            return await _mfa_failed(conn, client, challenge.user_id, "challenge_ended", now)
        user = await users.lock_for_login(conn, challenge.user_id)
        refusal = _challenge_refusal(challenge, user, dpop_jkt, now)
        if refusal is not None or user is None:
            await self._factors.challenge_answered(conn, challenge, now)  # it ends here
            return await _mfa_failed(conn, client, challenge.user_id, refusal, now)
        try:
            proved = await self._factors.verify(
                conn, client, user.id, None, proof, now, purpose="login"
            )
        except (InvalidFactorCode, MfaNotEnabled):
            await self._factors.challenge_failed(conn, challenge, now)
            await self._lockout.count_failure(conn, client, user, now)
            return await _mfa_failed(conn, client, user.id, "wrong_code", now)
        await self._factors.challenge_answered(conn, challenge, now)
        if user.failed_logins or user.locked_until:
            await users.reset_login_failures(conn, user.id)
        context = AuthContext(
            amr=f"pwd {proved.amr} mfa", auth_time=challenge.created_at, factor_at=now
        )
        issued = await self._sessions.start_in(
            uow, user, client, challenge.device_name, now, challenge.dpop_jkt, context
        )
        return self._granted(issued, user, None, challenge.dpop_jkt)

    async def _unproven_address(
        self, uow: UnitOfWork, client: ClientInfo, user: UserRecord, now: datetime
    ) -> LoginRefused | None:
        """With REQUIRE_VERIFIED_EMAIL, an account whose address is unproven is refused (and a
        fresh link goes to the address), whatever proved who the user is."""
        if self._unverified is None or user.email_verified_at is not None:
            return None
        await self._unverified.on_unverified_login(uow, client, user, now)
        await record(
            await uow.connection(),
            "login.failed",
            now=now,
            client=client,
            user_id=user.id,
            reason="email_not_verified",
        )
        return LoginRefused("email_not_verified")

    async def _trusts(self, device: DeviceProof | None, user: UserRecord | None) -> bool:
        """Whether `device` is a trusted device of `user`: its token names the account and
        its current password, and the device has not used up its own wrong passwords."""
        if device is None or user is None or device.user_id != user.id:
            return False
        tag = self._devices.password_tag(user.password_hash)
        if not hmac.compare_digest(device.password_tag, tag):
            return False
        return await self._limiter.allows("login_device_failures", device.device_id)

    async def _count_failure(
        self,
        conn: AsyncConnection,
        client: ClientInfo,
        user: UserRecord,
        now: datetime,
        trusted_device: DeviceProof | None,
    ) -> None:
        """A trusted device's wrong password counts against the device (its own limit);
        anyone else's against the account (its lockout)."""
        if trusted_device is not None:
            await self._limiter.count("login_device_failures", trusted_device.device_id)
        else:
            await self._lockout.count_failure(conn, client, user, now)

    def _granted(
        self,
        issued: IssuedSession,
        user: UserRecord,
        device: DeviceProof | None,
        jkt: str | None,
    ) -> TokenGrant:
        """The grant, with a device token for the account: a fresh device, or the trusted
        one keeping its id (and its failure count)."""
        device_token = self._devices.issue(
            user_id=user.id,
            email=user.email,
            password_hash=user.password_hash,
            now=issued.now,
            device_id=device.device_id if device is not None else None,
        )
        grant = grant_for(self._access, issued, jkt)
        return replace(grant, device_token=device_token)

    async def refresh(
        self,
        refresh_token: str,
        client: ClientInfo,
        guard: SessionGuard | None = None,
        dpop_jkt: str | None = None,
    ) -> TokenGrant:
        """Rotate a refresh token (its own unit of work: one store call) and sign an access
        token for the session, bound to `dpop_jkt` when the request proved a DPoP key (a bound
        session rotates only with its own key's proof)."""
        issued = await self._sessions.rotate(refresh_token, client, guard, dpop_jkt)
        return grant_for(self._access, issued, dpop_jkt)

    async def logout(
        self, uow: UnitOfWork, client: ClientInfo, session_id: uuid.UUID, user_id: uuid.UUID
    ) -> None:
        now = self._clock.now()
        await self._sessions.revoke(uow, now=now, reason="logout", session_id=session_id)
        await record(
            await uow.connection(),
            "logout",
            now=now,
            client=client,
            user_id=user_id,
            session_id=session_id,
            scope="session",
        )

    async def logout_with_refresh_token(
        self,
        uow: UnitOfWork,
        client: ClientInfo,
        refresh_token: str,
        guard: SessionGuard,
        dpop_jkt: str | None = None,
    ) -> None:
        """Cookie logout without an access token (it may have expired): the refresh token
        names the session, the guard proves the request comes from our page, and a session
        bound to a DPoP key needs a proof by it (`dpop_jkt`)."""
        session = await self._sessions.session_of_refresh_token(uow, refresh_token, guard, dpop_jkt)
        await self.logout(uow, client, session.id, session.user_id)

    async def logout_all(
        self,
        uow: UnitOfWork,
        client: ClientInfo,
        user_id: uuid.UUID,
        current_session_id: uuid.UUID,
    ) -> int:
        now = self._clock.now()
        revoked = await self._sessions.revoke(uow, now=now, reason="logout_all", user_id=user_id)
        await record(
            await uow.connection(),
            "logout",
            now=now,
            client=client,
            user_id=user_id,
            session_id=current_session_id,
            scope="all",
            sessions_revoked=len(revoked),
        )
        return len(revoked)


def _looked_usable(candidate: UserRecord, now: datetime) -> bool:
    """Whether the user, as read before the hash, could log in. Only then is the one-round-trip
    start tried: a locked or deactivated account must take the same path, and the same time,
    whether the password was right or not (else timing tells a guesser during a lockout)."""
    return candidate.is_active and not candidate.is_locked_at(now)


async def _mfa_failed(
    conn: AsyncConnection,
    client: ClientInfo,
    user_id: uuid.UUID | None,
    reason: str | None,
    now: datetime,
) -> LoginRefused:
    """A second step refused, audited: a wrong code (try again) or a challenge that has
    ended (log in again)."""
    await record(conn, "login.mfa_failed", now=now, client=client, user_id=user_id, reason=reason)
    return LoginRefused("wrong_code" if reason == "wrong_code" else "challenge_invalid")


def _challenge_refusal(
    challenge: StoredChallenge, user: UserRecord | None, dpop_jkt: str | None, now: datetime
) -> str | None:
    """Why the challenge can no longer be answered by this request (None: it can)."""
    if user is None or not user.is_active:
        return "inactive"
    if user.password_hash != challenge.password_hash:
        return "password_changed"
    if not user.mfa_enabled:
        return "mfa_disabled"
    if user.is_locked_at(now):
        return "locked"
    if challenge.dpop_jkt != dpop_jkt:
        return "dpop_key_mismatch"
    return None


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
