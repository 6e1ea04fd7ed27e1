"""Email through the outbox against a real SMTP server (aiosmtpd): written in the caller's
transaction, delivered by the worker, retried across an SMTP outage, given up on a refusal,
and recognisable when a crash makes the worker send it twice (docs/mail.md)."""

from __future__ import annotations

import email
import email.policy
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.context import build_mail
from app.core.db import table_of
from app.core.settings import Settings
from app.outbox.repository import ClaimedMessage
from tests.conftest import Harness, start_harness
from tests.mail.conftest import SmtpServer, mail_settings
from tests.outbox.conftest import outbox_rows
from tests.support.receiver import eventually

TO = "ada@example.com"
SECRET = "reset-code-Zq7x0K2"  # noqa: S105 - a test value, looked for where it must not be
_audit = table_of(AuditEvent)


def _templates(folder: Path) -> Path:
    """A message of the test's own: a secret in the body, a name with markup in it."""
    (folder / "probe.subject.txt").write_text("Hello {{ name }}\nfrom {{ service_name }}\n")
    (folder / "probe.txt").write_text("Dear {{ name }}, your code is {{ code }}.\n")
    (folder / "probe.html").write_text("<p>Dear {{ name }}, your code is <b>{{ code }}</b>.</p>\n")
    return folder


@pytest.fixture
async def probe(database_url: str, smtp: SmtpServer, tmp_path: Path) -> AsyncIterator[Harness]:
    settings = mail_settings(database_url, smtp, mail_templates_dir=_templates(tmp_path))
    async for h in start_harness(settings):
        yield h


async def _queue(h: Harness, key: str, to: str = TO) -> None:
    async with h.ctx.engine.begin() as conn:
        await h.ctx.mail.queue(
            conn,
            to=to,
            template="probe",
            key=key,
            now=h.clock.now(),
            context={"name": "Ada <b>Lovelace</b>"},
            secrets={"code": SECRET},
        )
    h.ctx.outbox.wake()


async def _ours(h: Harness, key: str) -> list[Any]:
    """The outbox rows of the messages queued under `key` (the database is the run's)."""
    return [row for row in await outbox_rows(h) if row.idempotency_key == f"email:{key}"]


async def test_a_queued_message_arrives_rendered_and_its_secret_is_sealed_at_rest(
    probe: Harness, smtp: SmtpServer
) -> None:
    await _queue(probe, "probe:1")
    await eventually(lambda: len(smtp.mailbox.to(TO)) == 1, what="the message")
    [message] = smtp.mailbox.to(TO)
    assert message["Subject"] == "Hello Ada <b>Lovelace</b> from authsvc"
    assert message["From"] == "Auth Test <no-reply@auth.test>"
    assert str(message["Message-ID"]).endswith("@auth.test>")
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None
    assert html is not None
    assert f"Dear Ada <b>Lovelace</b>, your code is {SECRET}." in text.get_content()
    assert (
        f"Dear Ada &lt;b&gt;Lovelace&lt;/b&gt;, your code is <b>{SECRET}</b>" in html.get_content()
    )
    [row] = await _ours(probe, "probe:1")
    assert SECRET not in str(row.payload)  # sealed: only the sender opens it
    await eventually(lambda: _delivered(probe, "probe:1"), what="the delivery recorded")


async def _delivered(h: Harness, key: str) -> bool:
    rows = await _ours(h, key)
    return bool(rows) and all(row.delivered_at is not None for row in rows)


async def test_the_same_key_queued_twice_is_one_message(probe: Harness, smtp: SmtpServer) -> None:
    await _queue(probe, "probe:twice")
    await _queue(probe, "probe:twice")  # a retried transaction
    await eventually(lambda: _delivered(probe, "probe:twice"), what="the delivery")
    assert len(smtp.mailbox.to(TO)) == 1
    assert len(await _ours(probe, "probe:twice")) == 1


async def test_an_smtp_outage_delays_the_message_and_loses_nothing(
    probe: Harness, smtp: SmtpServer
) -> None:
    smtp.stop()
    await _queue(probe, "probe:outage")

    async def failed_once() -> bool:
        rows = await _ours(probe, "probe:outage")
        return bool(rows) and rows[0].attempts >= 1 and rows[0].last_error == "connect_error"

    await eventually(failed_once, what="a failed attempt")
    [row] = await _ours(probe, "probe:outage")
    assert row.delivered_at is None
    assert row.gave_up_at is None
    smtp.start()
    probe.clock.advance(3)  # past the retry delay (OUTBOX_RETRY_MAX 2 s)
    probe.ctx.outbox.wake()
    await eventually(lambda: len(smtp.mailbox.to(TO)) == 1, what="the message after the outage")
    await eventually(lambda: _delivered(probe, "probe:outage"), what="the delivery recorded")


async def test_a_refused_recipient_is_given_up_at_once_and_audited(
    probe: Harness, smtp: SmtpServer
) -> None:
    smtp.mailbox.refuse = True
    await _queue(probe, "probe:refused", to="nobody@example.com")

    async def given_up() -> bool:
        rows = await _ours(probe, "probe:refused")
        return bool(rows) and rows[0].gave_up_at is not None

    await eventually(given_up, what="the give-up")
    [row] = await _ours(probe, "probe:refused")
    assert (row.attempts, row.last_error) == (1, "recipient_refused")
    async with probe.ctx.engine.connect() as conn:
        events = list(await conn.execute(select(_audit).where(_audit.c.event == "mail.failed")))
    assert [e.details["template"] for e in events] == ["probe"]


async def test_sent_twice_after_a_crash_both_copies_carry_one_message_id(
    probe: Harness, smtp: SmtpServer
) -> None:
    """A worker that dies after the server's 250 and before recording it leaves the message to
    the next claim: the copy it sends is the same message (only the MIME boundary differs),
    Message-ID included (mail clients show it once). Two attempts of one claimed message stand
    for the crash and the retry; the harness's own worker is kept off it by a failed attempt
    (its retry is due only when the frozen clock moves)."""
    smtp.stop()
    await _queue(probe, "probe:crash")

    async def failed_once() -> bool:  # recorded: attempts counts a claim, not an outcome
        rows = await _ours(probe, "probe:crash")
        return bool(rows) and rows[0].last_error == "connect_error"

    await eventually(failed_once, what="the worker's failed attempt")
    smtp.start()
    [row] = await _ours(probe, "probe:crash")
    _, sender = build_mail(probe.ctx.settings)
    claimed = ClaimedMessage(row.id, row.kind, row.payload, row.created_at, row.attempts + 1)
    for _ in range(2):
        assert (await sender.send(claimed, probe.clock.now())).delivered
    copies = smtp.mailbox.to(TO)
    assert len(copies) == 2
    assert copies[0]["Message-ID"] == copies[1]["Message-ID"] == row.payload["message_id"]
    first, second = ((c["Subject"], c.get_body(("plain",)), c.get_body(("html",))) for c in copies)
    assert first[0] == second[0]
    for ours, theirs in zip(first[1:], second[1:], strict=True):
        assert ours is not None
        assert theirs is not None
        assert ours.get_content() == theirs.get_content()


async def test_without_smtp_url_each_message_is_an_eml_file(
    database_url: str, tmp_path: Path
) -> None:
    from tests.conftest import make_settings

    folder = tmp_path / "mail"
    settings = make_settings(
        database_url, mail_dir=str(folder), mail_templates_dir=str(_templates(tmp_path))
    )
    assert settings.smtp_url is None
    async for h in start_harness(settings):
        await _queue(h, "probe:file")
        await eventually(functools.partial(_delivered, h, "probe:file"), what="the delivery")
        [row] = await _ours(h, "probe:file")
    # The run's database may hold other tests' pending messages, which land here too.
    path = folder / (row.payload["message_id"].strip("<>") + ".eml")
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["To"] == TO
    assert SECRET in message.as_string()
    assert not list(folder.glob("*.part"))


def test_mail_settings_are_checked() -> None:
    from tests.conftest import TEST_SECRET

    def problems(**values: Any) -> str:
        try:
            Settings(_env_file=None, secret_key=TEST_SECRET, **values)
        except ValueError as exc:
            return str(exc)
        return ""

    assert "SMTP_URL must look like" in problems(smtp_url="mail.example.com:587")
    assert "SMTP_URL must look like" in problems(smtp_url="http://mail.example.com")
    assert "MAIL_FROM must be an address" in problems(mail_from="nobody")
    assert "MAIL_FROM must be an address" in problems(mail_from="a@b.c\r\nBcc: x@y.z")
    assert "MAIL_TEMPLATES_DIR is not a folder" in problems(mail_templates_dir="/nonexistent")
    for url in ("smtp://u:p@mail.example.com:587", "smtps://mail.example.com", "smtp+starttls://m"):
        assert problems(smtp_url=url) == ""
