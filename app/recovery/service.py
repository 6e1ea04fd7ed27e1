"""Password reset (docs/recovery.md).

A request answers 202 and writes one outbox job whatever the address: the same statements,
the same time, so neither the answer nor its timing says whether an account exists. The
outbox worker then processes the job (`ResetIssuer`): for an active account it issues a token
and writes the email in one transaction, so the token exists if and only if its email is on
its way; for any other address it does nothing. A confirmation spends the token, sets the
password and revokes every session of the account (back-channel logout included)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.account.service import AccountService, Actor
from app.audit.service import record
from app.core.client import ClientInfo
from app.core.clock import Clock
from app.core.db import UnitOfWork, committed_unit
from app.core.security import PasswordHasher, TokenHasher
from app.mail.service import MailQueue
from app.outbox import repository as outbox
from app.outbox.repository import NewMessage
from app.outbox.service import Attempt, ClaimedMessage, Subject
from app.recovery import repository
from app.recovery.errors import ResetTokenInvalid
from app.recovery.repository import FoundToken
from app.users import repository as users
from app.users import service as user_rules
from app.users.errors import InvalidPassword

KIND = "password_reset"
TEMPLATE = "password_reset"


async def issue(
    conn: AsyncConnection,
    hasher: TokenHasher,
    user_id: uuid.UUID,
    request_id: uuid.UUID,
    *,
    now: datetime,
    ttl: timedelta,
) -> str | None:
    """A token of the hasher's purpose for this request, voiding the user's older ones of
    that purpose; None when this request has its token already (processed again)."""
    token, token_hash = hasher.new()
    issued = await repository.insert(
        conn,
        purpose=hasher.purpose,
        user_id=user_id,
        request_id=request_id,
        token_hash=token_hash,
        now=now,
        expires_at=now + ttl,
    )
    if issued is None:
        return None
    await repository.spend_others(
        conn, user_id, purpose=hasher.purpose, now=now, reason="superseded", except_id=issued
    )
    return token


async def purge_expired(engine: AsyncEngine, *, now: datetime) -> tuple[int, int]:
    """(account tokens, pending registrations) deleted: tokens a day after they expired (a
    late click still finds its token and is told it expired), registrations at once."""
    async with engine.begin() as conn:
        tokens = await repository.delete_expired_tokens(conn, before=now - timedelta(days=1))
        pending = await repository.delete_expired_pending(conn, now=now)
    return tokens, pending


class ResetIssuer:
    """The outbox's sender of kind "password_reset": issues the token and writes its email.
    Idempotent per request: a job processed twice (its worker died after the commit) finds
    its token already issued and changes nothing."""

    kind = KIND
    failure_event = "password_reset.failed"
    give_up_after = timedelta(hours=1)

    def __init__(
        self,
        engine: AsyncEngine,
        mail: MailQueue,
        hasher: TokenHasher,
        *,
        ttl: int,
        reset_url: str | None,
    ) -> None:
        self._engine = engine
        self._mail = mail
        self._hasher = hasher
        self._ttl = timedelta(seconds=ttl)
        self._reset_url = reset_url

    def subject(self, payload: Mapping[str, Any]) -> Subject:
        return Subject(details={"request_id": str(payload.get("request_id"))})

    async def send(self, message: ClaimedMessage, now: datetime) -> Attempt:
        async with self._engine.begin() as conn:
            await self._issue(conn, message.payload, now)
        return Attempt(delivered=True)

    async def _issue(
        self, conn: AsyncConnection, payload: Mapping[str, Any], now: datetime
    ) -> None:
        user = await users.get_by_email(conn, payload["email"])
        if user is None or not user.is_active:
            return  # nothing is sent: the 202 said only that a request was taken
        request_id = uuid.UUID(payload["request_id"])
        token = await issue(conn, self._hasher, user.id, request_id, now=now, ttl=self._ttl)
        if token is None:
            return  # this request's token and email were written by an earlier attempt
        link = self._reset_url.replace("{token}", token) if self._reset_url else ""
        await self._mail.queue(
            conn,
            to=user.email,
            template=TEMPLATE,
            key=f"{KIND}:{request_id}",
            now=now,
            context={"minutes": str(int(self._ttl.total_seconds() // 60))},
            secrets={"token": token, "reset_url": link},
            user_id=user.id,
        )
        client = ClientInfo(ip=payload.get("ip"))
        await record(conn, "password_reset.issued", now=now, client=client, user_id=user.id)


class PasswordResets:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        hasher: TokenHasher,
        passwords: PasswordHasher,
        accounts: AccountService,
        clock: Clock,
        max_attempts: int,
        on_enqueued: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self._on_enqueued = on_enqueued
        self._hasher = hasher
        self._passwords = passwords
        self._accounts = accounts
        self._clock = clock
        self._max_attempts = max_attempts

    async def request(self, uow: UnitOfWork, client: ClientInfo, email: str) -> None:
        """What a reset request writes, known address or not: one job for the outbox worker
        (woken once the request commits)."""
        request_id = uuid.uuid4()
        payload = {"email": email, "request_id": str(request_id), "ip": client.ip}
        await outbox.enqueue(
            await uow.connection(),
            [NewMessage(kind=KIND, idempotency_key=f"{KIND}:{request_id}", payload=payload)],
            now=self._clock.now(),
        )
        uow.after_commit(self._on_enqueued)

    async def confirm(
        self, uow: UnitOfWork, client: ClientInfo, token: str, new_password: str
    ) -> int:
        """Set the new password and revoke every session; returns how many. The password is
        checked and hashed before the unit of work opens (no connection held meanwhile)."""
        token_hash = self._hasher.hash(token)
        async with self._engine.connect() as conn:
            found, user = await self._usable(conn, token_hash)
        try:
            user_rules.check_password_policy(new_password, email=user.email)
        except InvalidPassword:
            async with committed_unit(self._engine) as failure:
                await repository.count_failure(
                    await failure.connection(),
                    found.id,
                    now=self._clock.now(),
                    max_attempts=self._max_attempts,
                )
            raise
        new_hash = await user_rules.hash_new_password(
            self._passwords, new_password, email=user.email
        )
        conn = await uow.connection()
        found, user = await self._usable(conn, token_hash, lock=True)  # not spent meanwhile
        now = self._clock.now()
        await repository.spend(conn, found.id, now=now, reason="used")
        await users.reset_login_failures(conn, user.id)
        if user.email_verified_at is None:  # the emailed link proves the mailbox too
            await users.mark_email_verified(conn, user.id, now=now)
        revoked = await self._accounts.reset_password(uow, Actor(client), user, new_hash)
        await record(
            conn,
            "password_reset.completed",
            now=now,
            client=client,
            user_id=user.id,
            sessions_revoked=revoked,
        )
        return revoked

    async def _usable(
        self, conn: AsyncConnection, token_hash: bytes, *, lock: bool = False
    ) -> tuple[FoundToken, users.UserRecord]:
        found = await repository.find(conn, KIND, token_hash, for_update=lock)
        now = self._clock.now()
        if found is None or not found.is_usable_at(now):
            raise ResetTokenInvalid()
        user = await users.get_by_id(conn, found.user_id)
        changed = await users.password_changed_at(conn, found.user_id)
        if user is None or not user.is_active or changed is None or changed > found.created_at:
            raise ResetTokenInvalid()  # a later password change voids every open token
        return found, user
