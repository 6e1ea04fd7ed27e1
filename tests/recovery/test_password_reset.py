"""Password reset by email (issue 21), against a real SMTP server: the full flow reads the
message from the server; unknown addresses get the same answer and no mail; tokens are single
use, short-lived, superseded by a newer request, voided by a password change, and spent by
too many refused passwords."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.core.db import table_of
from app.recovery.models import AccountToken
from app.users import repository as users_repository
from tests.conftest import PASSWORD, Harness, error_code, start_harness
from tests.mail.conftest import SmtpServer, mail_settings, mailed
from tests.outbox.conftest import outbox_rows
from tests.support.receiver import eventually
from tests.support.timing import assert_same_time, interleaved

NEW_PASSWORD = "a brand new passphrase 42"  # noqa: S105 - a test value
_audit = table_of(AuditEvent)
_tokens = table_of(AccountToken)


@pytest.fixture
async def h(database_url: str, smtp: SmtpServer) -> AsyncIterator[Harness]:
    async for harness in start_harness(mail_settings(database_url, smtp)):
        yield harness


async def _request(h: Harness, email: str) -> httpx.Response:
    return await h.client.post("/auth/password-reset/request", json={"email": email})


async def _confirm(h: Harness, token: str, password: str = NEW_PASSWORD) -> httpx.Response:
    return await h.client.post(
        "/auth/password-reset/confirm", json={"token": token, "new_password": password}
    )


async def _mailed_token(smtp: SmtpServer, email: str, count: int = 1) -> str:
    """The token of the `count`-th reset message to `email`, read from the SMTP server."""
    return await mailed(
        smtp,
        email,
        subject="Reset your authsvc password",
        pattern=r"Your reset token: (\S+)|new password here: \S+#token=(\S+)",
        count=count,
    )


async def _events(h: Harness, *names: str) -> list[Any]:
    async with h.ctx.engine.connect() as conn:
        query = select(_audit).where(_audit.c.event.in_(names)).order_by(_audit.c.id)
        return list(await conn.execute(query))


async def test_the_full_reset_signs_out_everywhere_and_sets_the_new_password(
    h: Harness, smtp: SmtpServer
) -> None:
    email = await h.create_user()
    before = await h.login(email)
    requested = await _request(h, email)
    assert requested.status_code == 202, requested.text
    token = await _mailed_token(smtp, email)
    [message] = smtp.mailbox.to(email)
    assert message["Subject"] == "Reset your authsvc password"

    confirmed = await _confirm(h, token)
    assert confirmed.status_code == 204, confirmed.text
    assert (await h.refresh(before["refresh_token"])).status_code == 401  # signed out
    await h.login(email, NEW_PASSWORD)
    old = await h.client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert old.status_code == 401
    again = await _confirm(h, token, "yet another passphrase 7")
    assert (again.status_code, error_code(again)) == (400, "reset_token_invalid")
    users = {row.user_id for row in await _events(h, "password_reset.issued")}
    completed = await _events(h, "password_reset.completed")
    assert [e.user_id for e in completed if e.user_id in users][-1:] != []
    assert completed[-1].details["sessions_revoked"] == 1


async def test_an_unknown_address_gets_the_same_answer_and_no_mail(
    h: Harness, smtp: SmtpServer
) -> None:
    email = await h.create_user()
    known = await _request(h, email)
    unknown = await _request(h, "nobody-here@example.com")
    assert (unknown.status_code, unknown.json()) == (known.status_code, known.json())
    await _mailed_token(smtp, email)

    async def processed() -> bool:  # the worker took the unknown address's job too
        rows = await _outbox_jobs(h)
        return bool(rows) and all(r.delivered_at is not None for r in rows)

    await eventually(processed, what="both jobs processed")
    assert smtp.mailbox.to("nobody-here@example.com") == []


async def _outbox_jobs(h: Harness) -> list[Any]:
    return [r for r in await outbox_rows(h) if r.kind == "password_reset"]


async def test_known_and_unknown_addresses_take_the_same_time(h: Harness) -> None:
    """The method of the login timing test: interleaved, medians compared, the same factor.
    The request's own work is the same statements for both (checked below, row for row);
    what differs comes after the answer, in the worker (a token and an email for a known
    address), and on a busy machine it also slows whichever request comes next."""
    email = await h.create_user()
    jobs_before = len(await _outbox_jobs(h))

    async def known_address(i: int) -> None:
        assert (await _request(h, email)).status_code == 202

    async def unknown_address(i: int) -> None:
        assert (await _request(h, f"ghost-{i}@example.com")).status_code == 202

    known, unknown = await interleaved(15, known_address, unknown_address)
    assert_same_time(known, unknown)
    jobs = (await _outbox_jobs(h))[jobs_before:]
    assert len(jobs) == 30  # one job each, alike but for the address
    assert {frozenset(job.payload) for job in jobs} == {frozenset({"email", "request_id", "ip"})}


async def test_a_newer_request_voids_the_older_token(h: Harness, smtp: SmtpServer) -> None:
    email = await h.create_user()
    await _request(h, email)
    first = await _mailed_token(smtp, email)
    await _request(h, email)
    second = await _mailed_token(smtp, email, count=2)
    refused = await _confirm(h, first)
    assert (refused.status_code, error_code(refused)) == (400, "reset_token_invalid")
    assert (await _confirm(h, second)).status_code == 204


async def test_a_password_change_voids_open_tokens(h: Harness, smtp: SmtpServer) -> None:
    email = await h.create_user()
    await _request(h, email)
    token = await _mailed_token(smtp, email)
    h.clock.advance(1)
    await h.set_password(email, "changed by the operator 1")
    refused = await _confirm(h, token)
    assert (refused.status_code, error_code(refused)) == (400, "reset_token_invalid")


async def test_a_token_expires(h: Harness, smtp: SmtpServer) -> None:
    email = await h.create_user()
    await _request(h, email)
    token = await _mailed_token(smtp, email)
    h.clock.advance(h.ctx.settings.password_reset_ttl)
    refused = await _confirm(h, token)
    assert (refused.status_code, error_code(refused)) == (400, "reset_token_invalid")


async def test_refused_new_passwords_are_bounded(h: Harness, smtp: SmtpServer) -> None:
    email = await h.create_user()
    await _request(h, email)
    token = await _mailed_token(smtp, email)
    for _ in range(h.ctx.settings.password_reset_max_attempts):
        refused = await _confirm(h, token, email)  # the policy refuses the address itself
        assert (refused.status_code, error_code(refused)) == (422, "invalid_password")
    spent = await _confirm(h, token)
    assert (spent.status_code, error_code(spent)) == (400, "reset_token_invalid")
    await h.login(email)  # nothing changed


async def test_a_garbage_token_changes_nothing(h: Harness) -> None:
    email = await h.create_user()
    refused = await _confirm(h, "not-a-token")
    assert (refused.status_code, error_code(refused)) == (400, "reset_token_invalid")
    await h.login(email)


async def test_the_token_lies_hashed_and_the_email_sealed(h: Harness, smtp: SmtpServer) -> None:
    email = await h.create_user()
    await _request(h, email)
    token = await _mailed_token(smtp, email)
    async with h.ctx.engine.connect() as conn:
        hashes = [row.token_hash for row in await conn.execute(select(_tokens))]
    payloads = [str(r.payload) for r in await outbox_rows(h)]
    assert all(token.encode() not in value for value in hashes)
    assert all(token not in payload for payload in payloads)


async def test_requests_are_rate_limited_per_account(database_url: str, smtp: SmtpServer) -> None:
    settings = mail_settings(
        database_url,
        smtp,
        rate_limits_enabled=True,
        rate_limit_password_reset_account="2/hour",
        rate_limit_namespace="reset-limits",
    )
    async for h in start_harness(settings):
        email = await h.create_user()
        assert [(await _request(h, email)).status_code for _ in range(3)] == [202, 202, 429]
        assert (await _request(h, "another@example.com")).status_code == 202


async def test_the_emailed_link_carries_the_token_to_the_frontend(
    database_url: str, smtp: SmtpServer
) -> None:
    """With PASSWORD_RESET_URL the email links to the frontend's page; following the link
    means reading the token from its fragment and confirming with it."""
    url = "https://app.test/reset#token={token}"
    async for harness in start_harness(mail_settings(database_url, smtp, password_reset_url=url)):
        email = await harness.create_user()
        await _request(harness, email)
        await _mailed_token(smtp, email)  # arrived (this message has no bare token line)
        [message] = smtp.mailbox.to(email)
        html = message.get_body(("html",))
        assert html is not None
        link = re.search(r'href="(https://app\.test/reset#token=[^"]+)"', html.get_content())
        assert link is not None, html.get_content()
        token = link.group(1).split("#token=", 1)[1]
        assert (await _confirm(harness, token)).status_code == 204
        await harness.login(email, NEW_PASSWORD)


def test_password_reset_url_needs_a_token_placeholder() -> None:
    from app.core.settings import Settings
    from tests.conftest import TEST_SECRET

    for bad in ("https://app.test/reset", "javascript:alert({token})"):
        with pytest.raises(ValueError, match="PASSWORD_RESET_URL must be"):
            Settings(_env_file=None, secret_key=TEST_SECRET, password_reset_url=bad)


async def test_confirmations_racing_with_one_token_change_the_password_once(
    h: Harness, smtp: SmtpServer
) -> None:
    email = await h.create_user()
    await _request(h, email)
    token = await _mailed_token(smtp, email)
    passwords = [f"racing passphrase number {i}" for i in range(5)]
    answers = await asyncio.gather(*(_confirm(h, token, p) for p in passwords))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [204, 400, 400, 400, 400], [a.text for a in answers]
    [winner] = [p for p, a in zip(passwords, answers, strict=True) if a.status_code == 204]
    await h.login(email, winner)


async def test_a_reset_proves_the_address(h: Harness, smtp: SmtpServer) -> None:
    email = await h.create_user(verified=False)
    await _request(h, email)
    assert (await _confirm(h, await _mailed_token(smtp, email))).status_code == 204
    async with h.ctx.engine.connect() as conn:
        user = await users_repository.get_by_email(conn, email)
    assert user is not None
    assert user.email_verified_at is not None
