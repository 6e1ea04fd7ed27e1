"""Where a rendered email goes: an SMTP server (aiosmtplib), or in development a folder of
`.eml` files, so that `make run` needs no mail server and a developer can open the links."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

import aiosmtplib

from app.core.settings import SMTP_SCHEMES

logger = logging.getLogger("app.mail")


class MailFailure(Exception):
    """One delivery attempt failed. `error`: a short fixed label (a metric label, the outbox's
    `last_error`: never the server's text, which may quote the message); `definitive`: the
    server refused the message itself (5xx), no retry can succeed."""

    def __init__(self, error: str, *, definitive: bool = False) -> None:
        super().__init__(error)
        self.error = error
        self.definitive = definitive


class MailTransport(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class SmtpTransport:
    """`smtp://[user:password@]host[:port]`: STARTTLS when the server offers it (port 25 or
    587); `smtp+starttls://`: STARTTLS required; `smtps://`: TLS from the first byte (465).
    Each attempt is bounded by `timeout` as a whole."""

    def __init__(self, url: str, *, timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in SMTP_SCHEMES or not parts.hostname:
            raise ValueError("SMTP_URL must look like smtp://user:password@host:587")
        self._host = parts.hostname
        self._port = parts.port
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._implicit_tls = parts.scheme == "smtps"
        self._start_tls: bool | None = True if parts.scheme == "smtp+starttls" else None
        self._timeout = timeout

    async def send(self, message: EmailMessage) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await aiosmtplib.send(
                    message,
                    hostname=self._host,
                    port=self._port,
                    username=self._username,
                    password=self._password,
                    use_tls=self._implicit_tls,
                    start_tls=None if self._implicit_tls else self._start_tls,
                    timeout=self._timeout,
                )
        except TimeoutError as exc:
            raise MailFailure("timeout") from exc
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise MailFailure("recipient_refused", definitive=_permanent(exc.recipients)) from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise MailFailure(f"smtp_{exc.code}", definitive=500 <= exc.code < 600) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise MailFailure("connect_error") from exc


def _permanent(refusals: list[aiosmtplib.SMTPRecipientRefused]) -> bool:
    return bool(refusals) and all(500 <= refusal.code < 600 for refusal in refusals)


class FileTransport:
    """Writes each message to `<folder>/<Message-ID>.eml` (the development default). The
    same message written twice is one file: a retried delivery replaces it."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    async def send(self, message: EmailMessage) -> None:
        try:
            path = await asyncio.to_thread(self._write, message)
        except OSError as exc:
            raise MailFailure("file_error") from exc
        logger.info("mail.written", extra={"path": str(path)})

    def _write(self, message: EmailMessage) -> Path:
        self._folder.mkdir(parents=True, exist_ok=True)
        name = str(message["Message-ID"]).strip("<>").replace("/", "_") + ".eml"
        path = self._folder / name
        handle, temporary = tempfile.mkstemp(dir=self._folder, suffix=".part")
        with os.fdopen(handle, "wb") as file:
            file.write(message.as_bytes())
        os.replace(temporary, path)
        return path
