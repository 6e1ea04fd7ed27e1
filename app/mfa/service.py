"""Second factors: an authenticator app (TOTP, RFC 6238) and single-use recovery codes, and the
challenges of two-step logins. No HTTP; every write goes in the caller's unit of work.

- The TOTP secret is sealed at rest (Fernet under a key derived from SECRET_KEY) and shown once,
  at enrolment. A code is accepted one step either side of now (RFC 6238 §5.2's advice for
  clock drift) and only once: the step it matched is stored, and a code of that step or an
  earlier one is refused.
- Recovery codes are 10 random codes of 60 bits each, stored as HMACs (app.core.security.
  TokenHasher); each works once. Using one is audited, and the owner is told by email.
- A challenge is what a right password buys an account with a second factor: an opaque token
  (stored as an HMAC), bound to the account, the password hash it checked, the device name and
  the DPoP key of the request; single use, short-lived, ended by too many wrong codes.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
import segno
from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.ext.asyncio import AsyncConnection

from app.audit.service import record
from app.core.client import ClientInfo
from app.core.security import TokenHasher, derive_key
from app.mail.service import MailQueue
from app.mfa import repository
from app.mfa.errors import (
    InvalidFactorCode,
    MfaNotEnabled,
    SecondFactorsPaused,
    SecondFactorUnreadable,
    TotpAlreadyEnabled,
    TotpNotEnrolling,
)
from app.mfa.passkeys import SECOND_FACTOR, STEP_UP, PasskeyProof, Passkeys
from app.mfa.repository import StoredChallenge, StoredTotp
from app.users import repository as users
from app.users.service import Lockout

TOTP_STEP = 30  # seconds: what authenticator apps assume when the URI names no period
TOTP_DIGITS = 6
RECOVERY_CODES = 10
RECOVERY_NOTICE_TEMPLATE = "recovery_code_used"
# The owner hears of every change to the account's second factors (ASVS 5 V6.3.7).
ENABLED_NOTICE_TEMPLATE = "mfa_enabled"
DISABLED_NOTICE_TEMPLATE = "mfa_disabled"
GUESSING_NOTICE_TEMPLATE = "mfa_codes_guessed"
PASSKEY_NOTICE_TEMPLATE = "passkey_added"
# RFC 8176 methods recorded for each factor: a recovery code is a one-time password too (a
# passkey's, hwk or swk, is its own: Asserted.method).
METHODS = {"totp": "otp", "recovery_code": "otp"}


@dataclass(frozen=True, slots=True)
class FactorProof:
    """What a client sends to prove the second factor: a TOTP code, a recovery code, or a
    passkey's assertion."""

    code: str | None = None
    recovery_code: str | None = None
    passkey: PasskeyProof | None = None


@dataclass(frozen=True, slots=True)
class Proved:
    factor: str  # "totp", "recovery_code" or "passkey"
    amr: str  # its RFC 8176 method


@dataclass(frozen=True, slots=True)
class TotpEnrolment:
    secret: str  # base32, for typing into an app
    uri: str  # otpauth://, for a QR code
    qr_svg: str


@dataclass(frozen=True, slots=True)
class FactorStatus:
    totp: bool
    totp_pending: bool
    recovery_codes_left: int
    passkeys: int

    @property
    def methods(self) -> tuple[str, ...]:
        """What a login's second step may be answered with."""
        codes = ("totp", "recovery_code") if self.totp else ()
        return codes + (("passkey",) if self.passkeys else ())


class SecondFactors:
    def __init__(
        self,
        *,
        secret_key: str,
        issuer: str,
        mail: MailQueue | None,
        challenge_ttl: timedelta,
        max_challenge_attempts: int,
        lockout: Lockout,
        passkeys: Passkeys,
    ) -> None:
        self._lockout = lockout
        self.passkeys = passkeys
        self._fernet = Fernet(base64.urlsafe_b64encode(derive_key(secret_key, "totp-secrets")))
        self._recovery = TokenHasher(secret_key, "recovery_code")
        self._challenges = TokenHasher(secret_key, "login_challenge")
        self._issuer = issuer
        self._mail = mail
        self.challenge_ttl = challenge_ttl
        self.max_challenge_attempts = max_challenge_attempts

    # --- enrolment ---------------------------------------------------------------------------

    async def begin_totp(
        self, conn: AsyncConnection, user_id: uuid.UUID, email: str, now: datetime
    ) -> TotpEnrolment:
        """A fresh secret, pending until confirmed with a first code (a pending one before it
        is replaced). Refused while the account has a confirmed one."""
        stored = await repository.get_totp(conn, user_id, for_update=True)
        if stored is not None and stored.confirmed_at is not None:
            raise TotpAlreadyEnabled()
        secret = pyotp.random_base32()
        await repository.put_pending_totp(conn, user_id, self._seal(secret), now)
        uri = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP).provisioning_uri(
            name=email, issuer_name=self._issuer
        )
        svg = segno.make(uri, error="m").svg_inline(scale=4, title="Authenticator app QR code")
        return TotpEnrolment(secret=secret, uri=uri, qr_svg=svg)

    async def confirm_totp(
        self,
        conn: AsyncConnection,
        client: ClientInfo,
        user_id: uuid.UUID,
        session_id: uuid.UUID,
        code: str,
        now: datetime,
    ) -> list[str]:
        """The first code turns the pending secret into the account's factor; returns the new
        recovery codes (shown this once)."""
        stored = await repository.get_totp(conn, user_id, for_update=True)
        if stored is None or stored.confirmed_at is not None:
            raise TotpNotEnrolling()
        step = _matching_step(self._open(stored.sealed_secret), code, now, stored.last_step)
        if step is None:
            raise InvalidFactorCode()
        await repository.confirm_totp(conn, user_id, step, now)
        await users.set_mfa_enabled(conn, user_id, enabled=True)
        codes = await self._new_recovery_codes(conn, user_id, now)
        await record(
            conn, "mfa.totp_enabled", now=now, client=client, user_id=user_id, session_id=session_id
        )
        await self._notify(conn, user_id, ENABLED_NOTICE_TEMPLATE, now)
        return codes

    async def disable(
        self,
        conn: AsyncConnection,
        client: ClientInfo,
        user_id: uuid.UUID,
        session_id: uuid.UUID,
        proof: FactorProof,
        now: datetime,
    ) -> None:
        """Remove the account's app and recovery codes; needs a factor, fresh. An account
        without an app has nothing to remove here (MfaNotEnabled): passkeys go one by one."""
        await self._require_app(conn, user_id)
        await self.verify(conn, client, user_id, session_id, proof, now, purpose="disable")
        await record(
            conn, "mfa.disabled", now=now, client=client, user_id=user_id, session_id=session_id
        )
        await self._remove(conn, user_id, now)

    async def reset(self, conn: AsyncConnection, user_id: uuid.UUID, now: datetime) -> bool:
        """An operator's removal of all the account's second factors, passkeys included (a lost
        app and codes, or a secret sealed under an old key); whether it had any."""
        had_app = (await repository.get_totp(conn, user_id, for_update=True)) is not None
        had = had_app or await repository.count_passkeys(conn, user_id) > 0
        if had:
            await repository.delete_passkeys(conn, user_id)
            await self._remove(conn, user_id, now)
        return had

    async def _remove(self, conn: AsyncConnection, user_id: uuid.UUID, now: datetime) -> None:
        """The app and the recovery codes gone; logins one step again unless passkeys remain.
        The owner is told."""
        await repository.delete_factors(conn, user_id)
        await self.factors_changed(conn, user_id)
        await self._notify(conn, user_id, DISABLED_NOTICE_TEMPLATE, now)

    async def factors_changed(self, conn: AsyncConnection, user_id: uuid.UUID) -> bool:
        """Whether the account has a second factor now (a confirmed app or a passkey), as its
        logins are told (users.mfa_enabled). Under the user's row lock: two changes at once
        (an app turned off while a passkey is added) read each other's outcome, in turn."""
        await users.lock_for_login(conn, user_id)
        stored = await repository.get_totp(conn, user_id)
        has = (stored is not None and stored.confirmed_at is not None) or (
            await repository.count_passkeys(conn, user_id) > 0
        )
        await users.set_mfa_enabled(conn, user_id, enabled=has)
        return has

    async def regenerate_recovery_codes(
        self,
        conn: AsyncConnection,
        client: ClientInfo,
        user_id: uuid.UUID,
        session_id: uuid.UUID,
        proof: FactorProof,
        now: datetime,
    ) -> list[str]:
        """Ten new codes in place of the old ones; needs a factor, fresh. Codes go with the app
        (MfaNotEnabled without one: they would never be accepted)."""
        await self._require_app(conn, user_id)
        await self.verify(conn, client, user_id, session_id, proof, now, purpose="regenerate")
        codes = await self._new_recovery_codes(conn, user_id, now)
        await record(
            conn,
            "mfa.recovery_codes_regenerated",
            now=now,
            client=client,
            user_id=user_id,
            session_id=session_id,
        )
        return codes

    async def _require_app(self, conn: AsyncConnection, user_id: uuid.UUID) -> None:
        stored = await repository.get_totp(conn, user_id)
        if stored is None or stored.confirmed_at is None:
            raise MfaNotEnabled("This account has no authenticator app.")

    async def status(self, conn: AsyncConnection, user_id: uuid.UUID) -> FactorStatus:
        stored = await repository.get_totp(conn, user_id)
        confirmed = stored is not None and stored.confirmed_at is not None
        return FactorStatus(
            totp=confirmed,
            totp_pending=stored is not None and not confirmed,
            recovery_codes_left=await repository.count_unused_codes(conn, user_id),
            passkeys=await repository.count_passkeys(conn, user_id),
        )

    # --- proving a factor --------------------------------------------------------------------

    async def verify(
        self,
        conn: AsyncConnection,
        client: ClientInfo,
        user_id: uuid.UUID,
        session_id: uuid.UUID | None,
        proof: FactorProof,
        now: datetime,
        *,
        purpose: str,
    ) -> Proved:
        """Check and spend a factor of the account: which, and its RFC 8176 method.
        InvalidFactorCode (nothing spent) if it does not check out, MfaNotEnabled if the account
        has no such factor. `purpose` "login" is a login's second step; anything else is a check
        inside a session (a passkey's ceremony says which it was opened for)."""
        if proof.passkey is not None:
            ceremony = SECOND_FACTOR if purpose == "login" else STEP_UP
            asserted = await self.passkeys.verify(
                conn, client, proof.passkey, now, purpose=ceremony, user_id=user_id
            )
            return Proved("passkey", asserted.method)
        stored = await repository.get_totp(conn, user_id, for_update=True)
        if stored is None or stored.confirmed_at is None:
            raise MfaNotEnabled()
        if stored.locked_until is not None and now < stored.locked_until:
            raise SecondFactorsPaused(max(1, int((stored.locked_until - now).total_seconds())))
        method = await self._spend(conn, client, user_id, session_id, proof, now, stored, purpose)
        if method is None:
            await self._count_failure(conn, client, user_id, session_id, stored, now)
            raise InvalidFactorCode()
        if stored.failures or stored.locked_until:
            await repository.record_factor_failures(conn, user_id, failures=0, locked_until=None)
        return Proved(method, METHODS[method])

    async def _spend(
        self,
        conn: AsyncConnection,
        client: ClientInfo,
        user_id: uuid.UUID,
        session_id: uuid.UUID | None,
        proof: FactorProof,
        now: datetime,
        stored: StoredTotp,
        purpose: str,
    ) -> str | None:
        if proof.code is not None:
            secret = self._open(stored.sealed_secret)
            step = _matching_step(secret, proof.code, now, stored.last_step)
            if step is not None and await repository.use_totp_step(conn, user_id, step):
                return "totp"
        elif proof.recovery_code is not None:
            code_hash = self._recovery.hash(_normalized(proof.recovery_code))
            if await repository.use_recovery_code(conn, user_id, code_hash, now):
                await self._recovery_code_used(conn, client, user_id, session_id, now, purpose)
                return "recovery_code"
        return None

    async def _count_failure(
        self,
        conn: AsyncConnection,
        client: ClientInfo,
        user_id: uuid.UUID,
        session_id: uuid.UUID | None,
        stored: StoredTotp,
        now: datetime,
    ) -> None:
        """One more wrong code in a row. At MFA_LOCKOUT_THRESHOLD the account's codes are no
        longer checked for a pause that doubles with each further one; the first pause tells
        the owner, since whoever is guessing got past the password (or holds a session)."""
        failures = stored.failures + 1
        seconds = self._lockout.seconds_after(failures)
        locked_until = None if seconds is None else now + timedelta(seconds=seconds)
        await repository.record_factor_failures(
            conn, user_id, failures=failures, locked_until=locked_until
        )
        if seconds is None:
            return
        await record(
            conn,
            "mfa.locked",
            now=now,
            client=client,
            user_id=user_id,
            session_id=session_id,
            failures=failures,
            seconds=seconds,
        )
        if failures == self._lockout.threshold:
            await self._notify(conn, user_id, GUESSING_NOTICE_TEMPLATE, now)

    async def _recovery_code_used(
        self,
        conn: AsyncConnection,
        client: ClientInfo,
        user_id: uuid.UUID,
        session_id: uuid.UUID | None,
        now: datetime,
        purpose: str,
    ) -> None:
        left = await repository.count_unused_codes(conn, user_id)
        await record(
            conn,
            "mfa.recovery_code_used",
            now=now,
            client=client,
            user_id=user_id,
            session_id=session_id,
            purpose=purpose,
            codes_left=left,
        )
        await self._notify(conn, user_id, RECOVERY_NOTICE_TEMPLATE, now, codes_left=str(left))

    async def notify(
        self, conn: AsyncConnection, user_id: uuid.UUID, template: str, now: datetime
    ) -> None:
        await self._notify(conn, user_id, template, now)

    async def _notify(
        self,
        conn: AsyncConnection,
        user_id: uuid.UUID,
        template: str,
        now: datetime,
        **context: str,
    ) -> None:
        """An email to the account's owner, through the outbox (in this transaction)."""
        account = await users.get_by_id(conn, user_id)
        if self._mail is None or account is None:
            return
        await self._mail.queue(
            conn,
            to=account.email,
            template=template,
            key=f"{template}:{user_id}:{now.isoformat()}",
            now=now,
            context=context,
            user_id=user_id,
        )

    # --- two-step login ----------------------------------------------------------------------

    async def open_challenge(
        self,
        conn: AsyncConnection,
        *,
        user_id: uuid.UUID,
        password_hash: str,
        device_name: str | None,
        dpop_jkt: str | None,
        now: datetime,
    ) -> str:
        token = secrets.token_urlsafe(32)
        await repository.insert_challenge(
            conn,
            token_hash=self._challenges.hash(token),
            user_id=user_id,
            password_hash=password_hash,
            device_name=device_name,
            dpop_jkt=dpop_jkt,
            now=now,
            expires_at=now + self.challenge_ttl,
        )
        return token

    async def take_challenge(self, conn: AsyncConnection, token: str) -> StoredChallenge | None:
        """The challenge `token` names, locked for this request (answerable or not)."""
        return await repository.lock_challenge(conn, self._challenges.hash(token))

    async def challenge_failed(
        self, conn: AsyncConnection, challenge: StoredChallenge, now: datetime
    ) -> None:
        last = challenge.attempts + 1 >= self.max_challenge_attempts
        await repository.record_attempt(conn, challenge.id, spent_at=now if last else None)

    async def challenge_answered(
        self, conn: AsyncConnection, challenge: StoredChallenge, now: datetime
    ) -> None:
        await repository.spend_challenge(conn, challenge.id, now)

    async def purge(self, conn: AsyncConnection, now: datetime) -> int:
        challenges = await repository.delete_expired_challenges(conn, now)
        return challenges + await self.passkeys.purge(conn, now)

    # --- internals ---------------------------------------------------------------------------

    async def _new_recovery_codes(
        self, conn: AsyncConnection, user_id: uuid.UUID, now: datetime
    ) -> list[str]:
        codes = [_recovery_code() for _ in range(RECOVERY_CODES)]
        hashes = [self._recovery.hash(_normalized(code)) for code in codes]
        await repository.replace_recovery_codes(conn, user_id, hashes, now)
        return codes

    def _seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def _open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken as exc:
            raise SecondFactorUnreadable() from exc


def _matching_step(secret: str, code: str, now: datetime, last_step: int | None) -> int | None:
    """The time step (now's, or one either side) whose code `code` is, if that step is later
    than `last_step` (a code works once); None otherwise."""
    if len(code) != TOTP_DIGITS or not code.isascii() or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP)
    current = int(now.timestamp()) // TOTP_STEP
    matched = None
    for step in (current - 1, current, current + 1):
        # Every candidate is compared (no early exit): the time taken says nothing.
        if hmac.compare_digest(totp.generate_otp(step), code) and (
            last_step is None or step > last_step
        ):
            matched = step
    return matched


def _recovery_code() -> str:
    """60 random bits as three groups of four base32 characters: xxxx-xxxx-xxxx."""
    raw = base64.b32encode(secrets.token_bytes(8)).decode().lower()[:12]
    return "-".join(raw[i : i + 4] for i in range(0, 12, 4))


def _normalized(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()
