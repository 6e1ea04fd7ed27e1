"""mail test ADDRESS: one message through the configured transport, now (not through the
outbox), so that a wrong SMTP_URL or MAIL_FROM shows at once."""

from __future__ import annotations

import argparse
import asyncio
from email.utils import make_msgid
from urllib.parse import urlsplit

from app.context import build_mail
from app.core.settings import Settings
from app.mail.transport import MailFailure


def run(args: argparse.Namespace, settings: Settings) -> str:
    _, sender = build_mail(settings)
    message_id = make_msgid(domain=sender.domain)
    try:
        asyncio.run(sender.send_now("mail_test", args.address, {}, message_id))
    except MailFailure as failure:
        raise SystemExit(
            f"error: the test message was not sent ({failure.error}) {_via(settings)}"
        ) from None
    if settings.smtp_url is None:
        return f"written to {settings.mail_dir} (SMTP_URL is unset)"
    return f"sent to {args.address} {_via(settings)}"


def _via(settings: Settings) -> str:
    """Where it went, without the password SMTP_URL may hold."""
    if settings.smtp_url is None:
        return f"into {settings.mail_dir}"
    parts = urlsplit(settings.smtp_url.get_secret_value())
    return f"via {parts.scheme}://{parts.hostname}:{parts.port or 'default port'}"
