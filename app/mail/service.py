"""Email through the outbox: `MailQueue.queue` writes a message in the caller's transaction
(it exists if and only if that commits); the outbox worker hands it to `MailSender`, which
renders it and gives it to the transport, with the worker's retries and give-up.

Delivery is at least once, and a repeat is recognisable: every attempt of one message carries
the same Message-ID (made from its idempotency key), so a crash between the server's 250 and
the worker recording it sends one identical copy, which mail clients show once.

What a message must carry but must not lie readable in the database (a reset link's token) is
`secrets`: sealed with a key derived from SECRET_KEY (Fernet: AES-CBC and HMAC-SHA256), opened
only by the sender at delivery time."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from email.utils import parseaddr
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from jinja2 import TemplateError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.security import derive_key
from app.mail.rendering import MailTemplates
from app.mail.transport import MailFailure, MailTransport
from app.outbox import repository as outbox
from app.outbox.repository import NewMessage
from app.outbox.service import Attempt, ClaimedMessage, Subject

KIND = "email"
FAILURE_EVENT = "mail.failed"


class Unsealable(Exception):
    """Sealed under another SECRET_KEY (or not sealed by us)."""


class Sealer:
    def __init__(self, secret: str) -> None:
        self._fernet = Fernet(base64.urlsafe_b64encode(derive_key(secret, "mail-secrets")))

    def seal(self, values: Mapping[str, str]) -> str:
        joined = "\n".join(f"{k}={v}" for k, v in values.items())
        return self._fernet.encrypt(joined.encode()).decode()

    def open(self, sealed: str) -> dict[str, str]:
        try:
            lines = self._fernet.decrypt(sealed.encode()).decode().split("\n")
        except InvalidToken as exc:
            raise Unsealable() from exc
        return dict(line.split("=", 1) for line in lines if line)


def _outbox_key(key: str) -> str:
    return f"{KIND}:{key}"


class MailQueue:
    def __init__(self, sealer: Sealer, *, sender_address: str) -> None:
        self._sealer = sealer
        self._domain = _domain(sender_address)

    async def queue(
        self,
        conn: AsyncConnection,
        *,
        to: str,
        template: str,
        key: str,
        now: datetime,
        context: Mapping[str, str] | None = None,
        secrets: Mapping[str, str] | None = None,
        user_id: uuid.UUID | None = None,
    ) -> None:
        """`key`: the idempotency key; a message already written under it is not written
        again (a retried transaction)."""
        digest = hashlib.sha256(key.encode()).hexdigest()[:32]
        payload: dict[str, Any] = {
            "to": to,
            "template": template,
            "context": dict(context or {}),
            "message_id": f"<{digest}@{self._domain}>",
            "user_id": str(user_id) if user_id else None,
        }
        if secrets:
            payload["sealed"] = self._sealer.seal(secrets)
        message = NewMessage(kind=KIND, idempotency_key=_outbox_key(key), payload=payload)
        await outbox.enqueue(conn, [message], now=now)

    async def written(self, conn: AsyncConnection, key: str) -> bool:
        """Whether a message was queued under `key` (see `queue`)."""
        return await outbox.has_key(conn, _outbox_key(key))


class MailSender:
    """The outbox's sender of kind "email"."""

    kind = KIND
    failure_event = FAILURE_EVENT

    def __init__(
        self,
        transport: MailTransport,
        templates: MailTemplates,
        sealer: Sealer,
        *,
        sender_address: str,
        base_context: Mapping[str, str],
        give_up_after: int,
    ) -> None:
        self._transport = transport
        self._templates = templates
        self._sealer = sealer
        self._sender_address = sender_address
        self._base_context = dict(base_context)
        self.give_up_after = timedelta(seconds=give_up_after)

    def subject(self, payload: Mapping[str, Any]) -> Subject:
        user_id = payload.get("user_id")
        return Subject(
            user_id=uuid.UUID(user_id) if user_id else None,
            details={"template": str(payload.get("template"))},
        )

    async def send(self, message: ClaimedMessage, now: datetime) -> Attempt:
        payload = message.payload
        try:
            secrets = self._sealer.open(payload["sealed"]) if payload.get("sealed") else {}
        except Unsealable:  # SECRET_KEY changed since it was written
            return Attempt(delivered=False, error="unsealable", definitive=True)
        context = {**payload["context"], **secrets}
        try:
            await self.send_now(payload["template"], payload["to"], context, payload["message_id"])
        except MailFailure as failure:
            return Attempt(delivered=False, error=failure.error, definitive=failure.definitive)
        return Attempt(delivered=True)

    async def send_now(
        self, template: str, to: str, context: Mapping[str, str], message_id: str
    ) -> None:
        """Render and hand to the transport, outside the outbox (`mail test`): MailFailure
        when it fails (a template that does not render: definitive "template_error")."""
        try:
            rendered = self._templates.render(template, {**self._base_context, **context})
        except TemplateError as exc:
            raise MailFailure("template_error", definitive=True) from exc
        email = rendered.message(sender=self._sender_address, to=to, message_id=message_id)
        await self._transport.send(email)

    @property
    def domain(self) -> str:
        """Of MAIL_FROM: what Message-IDs end with."""
        return _domain(self._sender_address)


def _domain(sender_address: str) -> str:
    return parseaddr(sender_address)[1].rpartition("@")[2] or "authsvc.invalid"
