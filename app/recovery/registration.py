"""Open registration (ALLOW_REGISTRATION) and the address it names (docs/recovery.md).

Without REQUIRE_VERIFIED_EMAIL an account is created at once (201, or 409 `email_taken`) and
its verification link is written in the same transaction.

With it, registration tells nobody which addresses have accounts, neither by its answer nor
by what a login answers afterwards:

- every address gets the same 202 after the same work: the password is checked and hashed,
  and one outbox job is written with the hash sealed in it;
- the outbox worker (`RegistrationProcessor`) then, for a new address, keeps the registration
  pending and emails its link; for an address with an account, emails the owner (at most once
  a day) that someone tried to register with it, and changes nothing;
- the account is made only when the link is followed with the password the registration
  chose (`Registrations.confirm`). Until then no account exists, so a login with that
  password answers as for any unknown address. A link holds one registration's password:
  whoever follows it must know that password, so a registration made by someone else in the
  owner's name is of no use to its maker (who cannot read the mail) nor to the owner (who
  does not know its password), and does not stand in the way of the owner's own.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.account.service import AccountService
from app.audit.service import record
from app.core.client import ClientInfo
from app.core.clock import Clock
from app.core.db import UnitOfWork, committed_unit
from app.core.security import PasswordHasher, TokenHasher
from app.mail.service import MailQueue, Sealer, Unsealable
from app.outbox import repository as outbox
from app.outbox.repository import NewMessage
from app.outbox.service import Attempt, ClaimedMessage, Subject
from app.recovery import repository
from app.recovery.errors import (
    RegistrationPasswordMismatch,
    RegistrationPasswordRequired,
    VerificationTokenInvalid,
)
from app.recovery.verification import VerificationLinks
from app.users import repository as users
from app.users import service as user_rules
from app.users.repository import UserRecord

KIND = "registration"
NOTICE_TEMPLATE = "registration_attempt"
LINK_TEMPLATE = "confirm_registration"
PURPOSE = "register"
MAX_PASSWORD_ATTEMPTS = 5  # wrong passwords with one link before it stops working


class Confirmation(enum.Enum):
    NOT_A_REGISTRATION = "not_a_registration"  # the token is no registration's link
    CONFIRMED = "confirmed"
    ADDRESS_TAKEN = "address_taken"  # an account was made for the address meanwhile


class Registrations:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        accounts: AccountService,
        links: VerificationLinks,
        hasher: TokenHasher,
        passwords: PasswordHasher,
        sealer: Sealer,
        clock: Clock,
        on_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self._accounts = accounts
        self._links = links
        self._hasher = hasher
        self._passwords = passwords
        self._sealer = sealer
        self._clock = clock
        self._on_enqueued = on_enqueued

    async def register(
        self, uow: UnitOfWork, client: ClientInfo, email: str, password: str
    ) -> tuple[uuid.UUID, str]:
        """The account now (EmailTaken for a known address), its verification link on the
        way; returns its id and stored (normalised) email."""
        user_id, stored = await self._accounts.register(uow, client, email, password)
        conn = await uow.connection()
        user = await user_rules.require_by_id(conn, user_id)
        await self._links.send(conn, user, client, now=self._clock.now())
        uow.after_commit(self._on_enqueued)
        return user_id, stored

    async def request(self, uow: UnitOfWork, client: ClientInfo, email: str, password: str) -> None:
        """What a registration writes, known address or not: one job. The password is checked
        and hashed first (the same work for every address), and sealed in the job."""
        email = user_rules.check_email(email)
        password_hash = await user_rules.hash_new_password(self._passwords, password, email=email)
        request_id = uuid.uuid4()
        payload = {
            "email": email,
            "request_id": str(request_id),
            "ip": client.ip,
            "sealed": self._sealer.seal({"password_hash": password_hash}),
        }
        await outbox.enqueue(
            await uow.connection(),
            [NewMessage(kind=KIND, idempotency_key=f"{KIND}:{request_id}", payload=payload)],
            now=self._clock.now(),
        )
        uow.after_commit(self._on_enqueued)

    async def confirm(
        self, uow: UnitOfWork, client: ClientInfo, token: str, password: str | None
    ) -> Confirmation:
        """Makes the account of the pending registration whose link this is, given the
        password it was made with. The password is checked before the unit of work opens (an
        argon2 run holds no connection); wrong ones are counted and bounded."""
        token_hash = self._hasher.hash(token)
        async with self._engine.connect() as conn:
            pending = await repository.find_pending(conn, token_hash)
        if pending is None:
            return Confirmation.NOT_A_REGISTRATION
        if pending.expires_at <= self._clock.now():
            raise VerificationTokenInvalid()
        password_hash = await self._checked_password(pending, password)
        conn = await uow.connection()
        if not await repository.take_pending(conn, pending.id):
            raise VerificationTokenInvalid()  # a concurrent confirmation took it
        await repository.delete_pending_of(conn, pending.email)
        if await users.get_by_email(conn, pending.email) is not None:
            return Confirmation.ADDRESS_TAKEN  # its pending rows go, with this unit of work
        now = self._clock.now()
        user_id = await user_rules.insert_new_user(
            conn, email=pending.email, password_hash=password_hash, now=now, verified=True
        )
        await record(conn, "user.registered", now=now, client=client, user_id=user_id)
        await record(conn, "email.verified", now=now, client=client, user_id=user_id)
        return Confirmation.CONFIRMED

    async def _checked_password(self, pending: repository.Pending, password: str | None) -> str:
        """The registration's password hash, once `password` matches it."""
        if not password:
            raise RegistrationPasswordRequired()
        try:
            password_hash = self._sealer.open(pending.sealed_password_hash)["password_hash"]
        except Unsealable as exc:  # SECRET_KEY changed since: register again
            raise VerificationTokenInvalid() from exc
        matches, _ = await self._passwords.verify_and_update(password, password_hash)
        if not matches:
            async with committed_unit(self._engine) as failure:
                await repository.count_pending_failure(
                    await failure.connection(), pending.id, max_attempts=MAX_PASSWORD_ATTEMPTS
                )
            raise RegistrationPasswordMismatch()
        return password_hash


class RegistrationProcessor:
    """The outbox's sender of kind "registration". Idempotent per job: the transaction that
    acts on it also takes the sealed hash out of it, so a job processed again (its worker
    died after the commit) finds nothing to do, and a finished job holds no password hash."""

    kind = KIND
    failure_event = "registration.failed"
    give_up_after = timedelta(hours=1)

    def __init__(
        self, engine: AsyncEngine, links: VerificationLinks, hasher: TokenHasher, mail: MailQueue
    ) -> None:
        self._engine = engine
        self._links = links
        self._hasher = hasher
        self._mail = mail

    def subject(self, payload: Mapping[str, Any]) -> Subject:
        return Subject(details={"request_id": str(payload.get("request_id"))})

    async def send(self, message: ClaimedMessage, now: datetime) -> Attempt:
        payload = message.payload
        if "sealed" not in payload:
            return Attempt(delivered=True)  # acted on by an earlier attempt
        spent = {key: value for key, value in payload.items() if key != "sealed"}
        async with self._engine.begin() as conn:
            # First, and only while this claim is the message's latest: a worker whose lease
            # ran out must not act on its stale copy after another has acted on the message.
            if not await outbox.replace_payload(conn, message, spent):
                return Attempt(delivered=False, error="claimed_elsewhere")
            await self._act(conn, payload, now)
        return Attempt(delivered=True)

    async def _act(self, conn: AsyncConnection, payload: Mapping[str, Any], now: datetime) -> None:
        client = ClientInfo(ip=payload.get("ip"))
        existing = await users.get_by_email(conn, payload["email"])
        if existing is None:
            await self._pend(conn, payload, now)
        elif existing.is_active:
            await self._notify_owner(conn, existing, client, now)
        else:
            await record(
                conn,
                "registration.address_taken",
                now=now,
                client=client,
                user_id=existing.id,
                reason="deactivated",
            )

    async def _pend(self, conn: AsyncConnection, payload: Mapping[str, Any], now: datetime) -> None:
        """The registration, pending its link (other pending ones of the address stay: each
        link works only with its own registration's password)."""
        request_id = uuid.UUID(payload["request_id"])
        token, token_hash = self._hasher.new()
        await repository.insert_pending(
            conn,
            email=payload["email"],
            request_id=request_id,
            token_hash=token_hash,
            sealed_password_hash=payload["sealed"],
            now=now,
            expires_at=now + self._links.ttl,
        )
        await self._links.queue(
            conn,
            to=payload["email"],
            token=token,
            key=f"{KIND}:{request_id}",
            now=now,
            template=LINK_TEMPLATE,
        )

    async def _notify_owner(
        self, conn: AsyncConnection, owner: UserRecord, client: ClientInfo, now: datetime
    ) -> None:
        """At most one notice a day per account, however many attempts: no mail bomb."""
        key = f"{NOTICE_TEMPLATE}:{owner.id}:{now.date().isoformat()}"
        if await self._mail.written(conn, key):
            return
        await self._mail.queue(
            conn, to=owner.email, template=NOTICE_TEMPLATE, key=key, now=now, user_id=owner.id
        )
        await record(conn, "registration.address_taken", now=now, client=client, user_id=owner.id)
