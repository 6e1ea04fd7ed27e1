"""Email verification (docs/recovery.md): a link proves the owner reads the address. The
token is issued and its email written in the caller's transaction; following the link sets
`users.email_verified_at`. With REQUIRE_VERIFIED_EMAIL, a login whose password is right but
whose address is unproven is refused and sends a fresh link (the auth service calls
`on_unverified_login`, so the login layer needs nothing of this one)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from app.audit.service import record
from app.core.client import ClientInfo
from app.core.clock import Clock
from app.core.db import UnitOfWork
from app.core.ratelimit import RateLimiter
from app.core.security import TokenHasher
from app.mail.service import MailQueue
from app.recovery import repository
from app.recovery.errors import EmailAlreadyVerified, VerificationTokenInvalid
from app.recovery.service import issue
from app.users import repository as users
from app.users.repository import UserRecord
from app.users.service import require_by_id

PURPOSE = "verify_email"


class VerificationLinks:
    """Issues a verification token and writes its email in the caller's transaction (older
    links of the user stop working)."""

    def __init__(self, *, hasher: TokenHasher, mail: MailQueue, ttl: int, url: str | None) -> None:
        self._hasher = hasher
        self._mail = mail
        self._ttl = timedelta(seconds=ttl)
        self._url = url

    @property
    def ttl(self) -> timedelta:
        return self._ttl

    def hash(self, token: str) -> bytes:
        return self._hasher.hash(token)

    async def send(
        self, conn: AsyncConnection, user: UserRecord, client: ClientInfo, *, now: datetime
    ) -> None:
        request_id = uuid.uuid4()
        token = await issue(conn, self._hasher, user.id, request_id, now=now, ttl=self._ttl)
        if token is None:  # pragma: no cover - a fresh request id is never taken
            return
        await self.queue(
            conn,
            to=user.email,
            token=token,
            key=f"{PURPOSE}:{request_id}",
            now=now,
            user_id=user.id,
        )
        await record(conn, "email.verification_sent", now=now, client=client, user_id=user.id)

    async def queue(
        self,
        conn: AsyncConnection,
        *,
        to: str,
        token: str,
        key: str,
        now: datetime,
        user_id: uuid.UUID | None = None,
        template: str = "verify_email",
    ) -> None:
        """The email of a link holding `token` (a pending registration's too)."""
        link = self._url.replace("{token}", token) if self._url else ""
        await self._mail.queue(
            conn,
            to=to,
            template=template,
            key=key,
            now=now,
            context={"hours": str(int(self._ttl.total_seconds() // 3600))},
            secrets={"token": token, "verify_url": link},
            user_id=user_id,
        )


class EmailVerification:
    def __init__(
        self,
        *,
        links: VerificationLinks,
        limiter: RateLimiter,
        clock: Clock,
        on_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
        self._links = links
        self._limiter = limiter
        self._clock = clock
        self._on_enqueued = on_enqueued

    async def request(self, uow: UnitOfWork, client: ClientInfo, user_id: uuid.UUID) -> None:
        """A fresh link for the signed-in user (older links stop working)."""
        conn = await uow.connection()
        user = await require_by_id(conn, user_id)
        if user.email_verified_at is not None:
            raise EmailAlreadyVerified()
        await self._limiter.hit("verify_email_account", str(user.id))
        await self._links.send(conn, user, client, now=self._clock.now())
        uow.after_commit(self._on_enqueued)

    async def on_unverified_login(
        self, uow: UnitOfWork, client: ClientInfo, user: UserRecord, now: datetime
    ) -> None:
        """A refused login's fresh link, within the per-account limit (beyond it, none: the
        refusal itself still says what is missing)."""
        if await self._limiter.allows("verify_email_account", str(user.id)):
            await self._limiter.count("verify_email_account", str(user.id))
            await self._links.send(await uow.connection(), user, client, now=now)
            uow.after_commit(self._on_enqueued)

    async def confirm(self, uow: UnitOfWork, client: ClientInfo, token: str) -> None:
        conn = await uow.connection()
        found = await repository.find(conn, PURPOSE, self._links.hash(token), for_update=True)
        now = self._clock.now()
        if found is None or not found.is_usable_at(now):
            raise VerificationTokenInvalid()
        await repository.spend(conn, found.id, now=now, reason="used")
        await users.mark_email_verified(conn, found.user_id, now=now)
        await record(conn, "email.verified", now=now, client=client, user_id=found.user_id)
