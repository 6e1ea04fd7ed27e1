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
- the account is made only when the link is followed (`Registrations.confirm`). Until then no
  account exists, so a login with the registered password answers as for any unknown
  address, and a later registration of the address (its owner's own) replaces the pending
  one: nobody can hold an address, or choose its password, without its mailbox.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.account.service import AccountService
from app.audit.service import record
from app.core.client import ClientInfo
from app.core.clock import Clock
from app.core.db import UnitOfWork
from app.core.security import PasswordHasher
from app.mail.service import MailQueue, Sealer, Unsealable
from app.outbox import repository as outbox
from app.outbox.repository import NewMessage
from app.outbox.service import Attempt, ClaimedMessage, Subject
from app.recovery import repository
from app.recovery.errors import VerificationTokenInvalid
from app.recovery.service import TokenHasher
from app.recovery.verification import VerificationLinks
from app.users import repository as users
from app.users import service as user_rules
from app.users.repository import UserRecord

KIND = "registration"
NOTICE_TEMPLATE = "registration_attempt"
PURPOSE = "register"


class Registrations:
    def __init__(
        self,
        *,
        accounts: AccountService,
        links: VerificationLinks,
        hasher: TokenHasher,
        passwords: PasswordHasher,
        sealer: Sealer,
        clock: Clock,
        on_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
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

    async def confirm(self, uow: UnitOfWork, client: ClientInfo, token: str) -> bool:
        """Makes the account of a pending registration whose link this is (its address
        proven); False when `token` is no such link."""
        conn = await uow.connection()
        pending = await repository.take_pending(conn, self._hasher.hash(token))
        if pending is None:
            return False
        now = self._clock.now()
        if pending.expires_at <= now:
            raise VerificationTokenInvalid()
        try:
            password_hash = self._sealer.open(pending.sealed_password_hash)["password_hash"]
        except Unsealable as exc:  # SECRET_KEY changed since: register again
            raise VerificationTokenInvalid() from exc
        user_id = await user_rules.insert_new_user(
            conn, email=pending.email, password_hash=password_hash, now=now, verified=True
        )
        await record(conn, "user.registered", now=now, client=client, user_id=user_id)
        await record(conn, "email.verified", now=now, client=client, user_id=user_id)
        return True


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
        async with self._engine.begin() as conn:
            await self._act(conn, payload, now)
            spent = {key: value for key, value in payload.items() if key != "sealed"}
            await outbox.set_payload(conn, message.id, spent)
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
        """The registration, pending its link; an older one of the address is replaced."""
        request_id = uuid.UUID(payload["request_id"])
        token, token_hash = self._hasher.new()
        pending_id = await repository.insert_pending(
            conn,
            email=payload["email"],
            request_id=request_id,
            token_hash=token_hash,
            sealed_password_hash=payload["sealed"],
            now=now,
            expires_at=now + self._links.ttl,
        )
        if pending_id is None:  # pragma: no cover - the job's hash is taken out with the row
            return
        await repository.delete_pending_of(conn, payload["email"], except_id=pending_id)
        key = f"{KIND}:{request_id}"
        await self._links.queue(conn, to=payload["email"], token=token, key=key, now=now)

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
