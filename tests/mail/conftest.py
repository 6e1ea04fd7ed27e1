"""A real SMTP server for the mail tests (aiosmtpd, in its own thread), and the service set up
to send through it."""

from __future__ import annotations

import email
import email.policy
import logging
import re
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from app.core.settings import Settings
from tests.conftest import Harness, make_settings, start_harness
from tests.support.receiver import eventually
from tests.support.servers import free_port

# aiosmtpd logs every DATA line at DEBUG: the messages (and their links) would fill the logs.
logging.getLogger("mail.log").setLevel(logging.WARNING)


class Mailbox:
    """What the server accepted, parsed; or, while `refuse` is set, a 550 for every
    recipient (a mailbox that does not exist)."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.refuse = False

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append(parsed)
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]


class SmtpServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.mailbox = Mailbox()
        self._controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


def mail_settings(database_url: str, smtp: SmtpServer, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_url": smtp.url,
        "smtp_timeout": 2.0,
        "mail_from": "Auth Test <no-reply@auth.test>",
        "outbox_poll_interval": 0.2,
        "outbox_retry_base": 1.0,
        "outbox_retry_max": 2.0,
        **overrides,
    }
    return make_settings(database_url, **values)


@pytest.fixture
async def mail_harness(database_url: str, smtp: SmtpServer) -> AsyncIterator[Harness]:
    async for h in start_harness(mail_settings(database_url, smtp)):
        yield h


async def mailed(
    smtp: SmtpServer, email: str, *, subject: str, pattern: str, count: int = 1
) -> str:
    """The first group of `pattern` in the plain text of the `count`-th message to `email`
    (waiting for it), after checking its subject."""
    await eventually(lambda: len(smtp.mailbox.to(email)) >= count, what=f"email {count}")
    message = smtp.mailbox.to(email)[count - 1]
    assert message["Subject"] == subject
    body = message.get_body(("plain",))
    assert body is not None
    found = re.search(pattern, body.get_content())
    assert found is not None, body.get_content()
    return next(group for group in found.groups() if group)
