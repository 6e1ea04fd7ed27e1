"""Open registration (ALLOW_REGISTRATION) and the address it names (docs/recovery.md).

Without REQUIRE_VERIFIED_EMAIL an account is created at once (201, or 409 `email_taken`) and
its verification link is written in the same transaction.

With it, the answer is 202 whatever the address, so registration no longer tells who has an
account: the request checks and hashes the password and writes one outbox job, the same
statements for every address. The outbox worker then (`RegistrationProcessor`), in one
transaction, creates the account and writes its verification link, or, when the address has
an account already, writes its owner an email saying someone tried to register with it. The
account exists only once its link is on the way; logging in needs the link anyway."""

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
from app.mail.service import MailQueue, Sealer
from app.outbox import repository as outbox
from app.outbox.repository import NewMessage
from app.outbox.service import Attempt, ClaimedMessage, Subject
from app.recovery.verification import VerificationLinks
from app.users import repository as users
from app.users import service as user_rules
from app.users.errors import EmailTaken

KIND = "registration"
NOTICE_TEMPLATE = "registration_attempt"


class Registrations:
    def __init__(
        self,
        *,
        accounts: AccountService,
        links: VerificationLinks,
        passwords: PasswordHasher,
        sealer: Sealer,
        clock: Clock,
        on_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
        self._accounts = accounts
        self._links = links
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


class RegistrationProcessor:
    """The outbox's sender of kind "registration". Idempotent per request: the account's
    link and the owner's notice are written under one mail key, so a job processed again (its
    worker died after the commit) finds that key taken and writes nothing."""

    kind = KIND
    failure_event = "registration.failed"
    give_up_after = timedelta(hours=1)

    def __init__(
        self, engine: AsyncEngine, mail: MailQueue, links: VerificationLinks, sealer: Sealer
    ) -> None:
        self._engine = engine
        self._mail = mail
        self._links = links
        self._sealer = sealer

    def subject(self, payload: Mapping[str, Any]) -> Subject:
        return Subject(details={"request_id": str(payload.get("request_id"))})

    async def send(self, message: ClaimedMessage, now: datetime) -> Attempt:
        try:
            async with self._engine.begin() as conn:
                await self._process(conn, message.payload, now)
        except EmailTaken:  # registered by a concurrent job: the next attempt tells the owner
            return Attempt(delivered=False, error="registered_meanwhile")
        return Attempt(delivered=True)

    async def _process(
        self, conn: AsyncConnection, payload: Mapping[str, Any], now: datetime
    ) -> None:
        request_id = uuid.UUID(payload["request_id"])
        mail_key = f"{KIND}:{request_id}"
        if await self._mail.written(conn, mail_key):
            return  # processed by an earlier attempt
        client = ClientInfo(ip=payload.get("ip"))
        existing = await users.get_by_email(conn, payload["email"])
        if existing is None:
            await self._create(conn, payload, client, now, request_id, mail_key)
        elif existing.is_active:
            await self._mail.queue(
                conn,
                to=existing.email,
                template=NOTICE_TEMPLATE,
                key=mail_key,
                now=now,
                user_id=existing.id,
            )
            await record(
                conn, "registration.address_taken", now=now, client=client, user_id=existing.id
            )

    async def _create(
        self,
        conn: AsyncConnection,
        payload: Mapping[str, Any],
        client: ClientInfo,
        now: datetime,
        request_id: uuid.UUID,
        mail_key: str,
    ) -> None:
        password_hash = self._sealer.open(payload["sealed"])["password_hash"]
        user_id = await user_rules.insert_new_user(
            conn, email=payload["email"], password_hash=password_hash, now=now, verified=False
        )
        await record(conn, "user.registered", now=now, client=client, user_id=user_id)
        user = await user_rules.require_by_id(conn, user_id)
        await self._links.send(
            conn, user, client, now=now, request_id=request_id, mail_key=mail_key
        )
