"""Open registration (issue 21), against a real SMTP server. With REQUIRE_VERIFIED_EMAIL every
address gets the same 202 in the same time: a new one a link that makes its account, a taken
one's owner a "someone tried to register" email (once a day), and nothing else changes; a
login afterwards tells nothing either. Without it, the account exists at once (201) and its
link is emailed too."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select

from app.audit.models import AuditEvent
from app.core.db import table_of
from app.mail.service import Sealer
from app.outbox import repository as outbox_repository
from app.outbox.repository import NewMessage
from app.outbox.service import ClaimedMessage
from app.recovery.models import PendingRegistration
from app.recovery.registration import MAX_PASSWORD_ATTEMPTS, RegistrationProcessor
from app.recovery.service import purge_expired
from app.users.models import User
from tests.conftest import PASSWORD, Harness, error_code, start_harness
from tests.mail.conftest import SmtpServer, mail_settings, mailed
from tests.outbox.conftest import outbox_rows
from tests.recovery.test_email_verification import _link_token
from tests.support.cli import cli
from tests.support.receiver import eventually
from tests.support.timing import assert_same_time, interleaved

_pending = table_of(PendingRegistration)

OTHER_PASSWORD = "somebody else's passphrase 9"  # noqa: S105 - a test value
NOTICE_SUBJECT = "Someone tried to create a authsvc account with your address"
_audit = table_of(AuditEvent)
_users = table_of(User)


def _fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


async def _register(h: Harness, email: str, password: str = PASSWORD) -> httpx.Response:
    return await h.client.post("/auth/register", json={"email": email, "password": password})


async def _login(h: Harness, email: str, password: str = PASSWORD) -> httpx.Response:
    return await h.client.post("/auth/login", json={"email": email, "password": password})


async def _user_count(h: Harness, email: str) -> int:
    async with h.ctx.engine.connect() as conn:
        found = await conn.scalar(select(func.count()).where(_users.c.email == email))
    return int(found or 0)


async def _registration_jobs(h: Harness, *emails: str) -> list[Any]:
    """The jobs of these addresses (the run's database holds other tests' too)."""
    rows = await outbox_rows(h)
    return [r for r in rows if r.kind == "registration" and r.payload["email"] in emails]


async def _processed(h: Harness, email: str) -> bool:
    return await _all_processed(h, email)


async def _all_processed(h: Harness, *emails: str) -> bool:
    rows = await _registration_jobs(h, *emails)
    return len({r.payload["email"] for r in rows}) == len(emails) and all(
        r.delivered_at is not None for r in rows
    )


async def _confirm(h: Harness, token: str, password: str | None = PASSWORD) -> httpx.Response:
    body = {"token": token} if password is None else {"token": token, "password": password}
    return await h.client.post("/auth/verify-email/confirm", json=body)


async def _pending_count(h: Harness, email: str) -> int:
    async with h.ctx.engine.connect() as conn:
        found = await conn.scalar(select(func.count()).where(_pending.c.email == email))
    return int(found or 0)


async def _registration_link(smtp: SmtpServer, email: str, count: int = 1) -> str:
    """The token of the `count`-th registration link sent to `email`."""
    return await mailed(
        smtp,
        email,
        subject="Confirm your new authsvc account",
        pattern=r"the password you registered with: (\S+)",
        count=count,
    )


async def _registered(h: Harness, smtp: SmtpServer, prefix: str) -> tuple[str, str]:
    """A fresh address registered with PASSWORD, and its link's token."""
    email = _fresh(prefix)
    assert (await _register(h, email)).status_code == 202
    return email, await _registration_link(smtp, email)


async def test_a_new_address_gets_202_and_its_account_when_the_link_is_followed(
    strict: Harness, smtp: SmtpServer
) -> None:
    email = _fresh("new")
    accepted = await _register(strict, email)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["status"] == "accepted"
    token = await _registration_link(smtp, email)
    assert (await _user_count(strict, email), await _pending_count(strict, email)) == (0, 1)
    early = await _login(strict, email)  # as for any address without an account
    assert (early.status_code, error_code(early)) == (401, "invalid_credentials")
    bare = await _confirm(strict, token, None)
    assert (bare.status_code, error_code(bare)) == (400, "password_required")
    wrong = await _confirm(strict, token, OTHER_PASSWORD)
    assert (wrong.status_code, error_code(wrong)) == (400, "password_mismatch")
    assert (await _confirm(strict, token)).status_code == 204
    assert (await _user_count(strict, email), await _pending_count(strict, email)) == (1, 0)
    assert (await _login(strict, email)).status_code == 200  # proven: no second link
    again = await _confirm(strict, token)
    assert (again.status_code, error_code(again)) == (400, "verification_token_invalid")


async def test_a_login_after_registering_says_nothing_about_the_address(
    strict: Harness, smtp: SmtpServer
) -> None:
    """Register an address with a password of your choosing, then log in with it: the same
    401 whether the address had an account or not."""
    taken, new = await strict.create_user(), _fresh("probe")
    for email in (taken, new):
        assert (await _register(strict, email, OTHER_PASSWORD)).status_code == 202
    await eventually(lambda: _all_processed(strict, taken, new), what="the jobs processed")
    answers = [await _login(strict, email, OTHER_PASSWORD) for email in (taken, new)]
    assert [(a.status_code, a.json()) for a in answers] == [(401, answers[1].json())] * 2


async def test_a_registration_in_someone_elses_name_is_of_no_use(
    strict: Harness, smtp: SmtpServer
) -> None:
    """Someone registers your address first, with a password of theirs. Its link reaches
    you, who cannot use it without their password; your own registration works alongside."""
    email = _fresh("squatted")
    await _register(strict, email, OTHER_PASSWORD)
    squatters = await _registration_link(smtp, email)
    await _register(strict, email)
    owners = await _registration_link(smtp, email, 2)
    refused = await _confirm(strict, squatters)  # the owner, with the owner's password
    assert (refused.status_code, error_code(refused)) == (400, "password_mismatch")
    assert (await _confirm(strict, owners)).status_code == 204
    assert (await _login(strict, email)).status_code == 200
    assert (await _login(strict, email, OTHER_PASSWORD)).status_code == 401
    late = await _confirm(strict, squatters, OTHER_PASSWORD)  # the account exists: all gone
    assert (late.status_code, error_code(late)) == (400, "verification_token_invalid")


async def test_wrong_passwords_with_a_link_are_bounded(strict: Harness, smtp: SmtpServer) -> None:
    email, token = await _registered(strict, smtp, "guessed")
    for _ in range(MAX_PASSWORD_ATTEMPTS):
        wrong = await _confirm(strict, token, OTHER_PASSWORD)
        assert error_code(wrong) == "password_mismatch"
    dead = await _confirm(strict, token)
    assert (dead.status_code, error_code(dead)) == (400, "verification_token_invalid")
    assert await _user_count(strict, email) == 0


async def test_an_expired_link_makes_no_account_and_is_purged(
    strict: Harness, smtp: SmtpServer
) -> None:
    email, token = await _registered(strict, smtp, "late")
    strict.clock.advance(strict.ctx.settings.email_verification_ttl + 1)
    late = await _confirm(strict, token)
    assert (late.status_code, error_code(late)) == (400, "verification_token_invalid")
    assert await _user_count(strict, email) == 0
    await purge_expired(strict.ctx.engine, now=strict.clock.now())
    assert await _pending_count(strict, email) == 0


async def test_two_confirmations_of_one_link_make_one_account(
    strict: Harness, smtp: SmtpServer
) -> None:
    email, token = await _registered(strict, smtp, "twice-clicked")
    answers = await asyncio.gather(_confirm(strict, token), _confirm(strict, token))
    assert sorted(a.status_code for a in answers) == [204, 400]
    assert await _user_count(strict, email) == 1


async def test_an_address_given_an_account_meanwhile_ends_its_links(
    strict: Harness, smtp: SmtpServer
) -> None:
    email, token = await _registered(strict, smtp, "meanwhile")
    await strict.create_user(email)  # an operator's, before the link was followed
    taken = await _confirm(strict, token)
    assert (taken.status_code, error_code(taken)) == (409, "email_taken")
    assert await _pending_count(strict, email) == 0
    again = await _confirm(strict, token)
    assert (again.status_code, error_code(again)) == (400, "verification_token_invalid")


async def _events_of(h: Harness, email: str, event: str) -> list[Any]:
    async with h.ctx.engine.connect() as conn:
        owner = await conn.scalar(select(_users.c.id).where(_users.c.email == email))
        query = select(_audit).where(_audit.c.event == event, _audit.c.user_id == owner)
        return list(await conn.execute(query))


async def test_a_taken_address_gets_the_same_answer_and_its_owner_one_notice_a_day(
    strict: Harness, smtp: SmtpServer
) -> None:
    email = await strict.create_user()
    new = await _register(strict, _fresh("other"))
    taken = await _register(strict, email, OTHER_PASSWORD)
    assert (taken.status_code, taken.json()) == (new.status_code, new.json())
    await eventually(lambda: len(smtp.mailbox.to(email)) == 1, what="the owner's notice")
    [notice] = smtp.mailbox.to(email)
    assert notice["Subject"] == NOTICE_SUBJECT
    body = notice.get_body(("plain",))
    assert body is not None
    assert "already has an account" in body.get_content()
    # Nothing else changed: one account, its own password.
    assert await _user_count(strict, email) == 1
    assert (await _login(strict, email)).status_code == 200
    assert (await _login(strict, email, OTHER_PASSWORD)).status_code == 401
    # More attempts the same day: no more mail (no mail bomb), no more audit rows.
    for _ in range(2):
        assert (await _register(strict, email, OTHER_PASSWORD)).status_code == 202
    await eventually(lambda: _processed(strict, email), what="the jobs processed")
    assert len(smtp.mailbox.to(email)) == 1
    assert len(await _events_of(strict, email, "registration.address_taken")) == 1
    strict.clock.advance(86400)  # the next day: one more
    await _register(strict, email, OTHER_PASSWORD)
    await eventually(lambda: len(smtp.mailbox.to(email)) == 2, what="the next day's notice")


async def test_a_deactivated_account_gets_the_same_answer_no_mail_and_an_audit_row(
    strict: Harness, smtp: SmtpServer, database_url: str
) -> None:
    email = await strict.create_user()
    deactivated = await cli(database_url, "users", "deactivate", email)
    assert deactivated.returncode == 0, deactivated.stderr
    answer = await _register(strict, email)
    assert answer.status_code == 202
    await eventually(lambda: _processed(strict, email), what="the job processed")
    assert smtp.mailbox.to(email) == []
    assert await _user_count(strict, email) == 1
    [event] = await _events_of(strict, email, "registration.address_taken")
    assert event.details["reason"] == "deactivated"


async def test_new_and_taken_addresses_take_the_same_time(strict: Harness) -> None:
    """The method of the login timing test: interleaved, medians compared, the same factor.
    The request's own work is the same for both (one job each, alike but for the address and
    the sealed hash, checked below); the worker's differs, after the answer."""
    email = await strict.create_user()
    addresses = [email, *(_fresh("timing") for _ in range(12))]

    async def taken_address(i: int) -> None:
        assert (await _register(strict, email)).status_code == 202

    async def new_address(i: int) -> None:
        assert (await _register(strict, addresses[i + 1])).status_code == 202

    taken, new = await interleaved(12, taken_address, new_address)
    assert_same_time(taken, new)
    jobs = await _registration_jobs(strict, *addresses)
    assert len(jobs) == 24
    # Each written with these and the sealed hash, which the worker takes out as it acts.
    fields = frozenset({"email", "request_id", "ip"})
    assert {frozenset(job.payload) - {"sealed"} for job in jobs} == {fields}


async def test_the_password_is_checked_before_anything_is_written(strict: Harness) -> None:
    addresses = (await strict.create_user(), _fresh("weak"))
    for email in addresses:
        weak = await _register(strict, email, "short")
        assert weak.status_code == 422
        same = await _register(strict, email, email)  # the address as its password
        assert (same.status_code, error_code(same)) == (422, "invalid_password")
    assert await _registration_jobs(strict, *addresses) == []


async def test_the_password_hash_lies_sealed_and_leaves_the_job(
    strict: Harness, smtp: SmtpServer
) -> None:
    email = _fresh("sealed")
    await _register(strict, email)
    await _registration_link(smtp, email)
    await eventually(lambda: _processed(strict, email), what="the job processed")
    [job] = await _registration_jobs(strict, email)
    assert "sealed" not in job.payload  # a finished job holds no hash at all
    async with strict.ctx.engine.connect() as conn:
        [sealed] = await conn.scalars(
            select(_pending.c.sealed_password_hash).where(_pending.c.email == email)
        )
    assert "argon2" not in sealed
    assert PASSWORD not in sealed


async def test_a_job_processed_again_does_nothing(strict: Harness, smtp: SmtpServer) -> None:
    """A worker that died after its commit leaves the job to be claimed again."""
    email = _fresh("twice")
    await _register(strict, email)
    await _registration_link(smtp, email)
    await eventually(lambda: _processed(strict, email), what="the job processed")
    [job] = await _registration_jobs(strict, email)
    attempt = await _processor(strict).send(_claimed(job), datetime.now(UTC))
    assert attempt.delivered
    mails = [r for r in await outbox_rows(strict) if r.kind == "email"]
    assert len([m for m in mails if m.payload["to"] == email]) == 1
    assert (await _pending_count(strict, email), await _user_count(strict, email)) == (1, 0)


async def test_a_stale_claim_does_not_act(strict: Harness) -> None:
    """A worker whose lease ran out while another claimed the job acts on nothing; the
    latest claim acts."""
    email = _fresh("stale")
    sealed = Sealer(strict.ctx.settings.secret_key.get_secret_value()).seal(
        {"password_hash": await strict.ctx.passwords.hash(PASSWORD)}
    )
    payload = {"email": email, "request_id": str(uuid.uuid4()), "ip": None, "sealed": sealed}
    job = NewMessage(kind="registration", idempotency_key=f"test:{email}", payload=payload)
    async with strict.ctx.engine.begin() as conn:  # due tomorrow: no worker takes it now
        await outbox_repository.enqueue(conn, [job], now=strict.clock.now() + timedelta(days=1))
    [row] = await _registration_jobs(strict, email)
    stale = _claimed(row, attempts=row.attempts + 1)
    attempt = await _processor(strict).send(stale, strict.clock.now())
    assert (attempt.delivered, attempt.error) == (False, "claimed_elsewhere")
    assert await _pending_count(strict, email) == 0
    assert (await _processor(strict).send(_claimed(row), strict.clock.now())).delivered
    assert await _pending_count(strict, email) == 1


def _processor(h: Harness) -> RegistrationProcessor:
    processor = h.ctx.outbox.sender("registration")
    assert isinstance(processor, RegistrationProcessor)
    return processor


def _claimed(job: Any, attempts: int | None = None) -> ClaimedMessage:
    count = job.attempts if attempts is None else attempts
    return ClaimedMessage(job.id, job.kind, job.payload, job.created_at, count)


async def test_registrations_are_rate_limited_per_address(
    database_url: str, smtp: SmtpServer
) -> None:
    settings = mail_settings(
        database_url,
        smtp,
        require_verified_email=True,
        allow_registration=True,
        rate_limits_enabled=True,
        rate_limit_register_account="2/hour",
        rate_limit_namespace=f"register-{uuid.uuid4().hex[:6]}",
    )
    async for h in start_harness(settings):
        email = await h.create_user()
        answers = [(await _register(h, email)).status_code for _ in range(3)]
        assert answers == [202, 202, 429]
        assert (await _register(h, _fresh("another"))).status_code == 202


async def test_without_required_verification_the_account_exists_at_once_and_gets_a_link(
    database_url: str, smtp: SmtpServer
) -> None:
    settings = mail_settings(database_url, smtp, allow_registration=True)
    async for h in start_harness(settings):
        email = _fresh("open")
        created = await _register(h, email)
        assert created.status_code == 201, created.text
        assert (await _login(h, email)).status_code == 200  # no proof needed here
        token = await _link_token(smtp, email)
        confirmed = await h.client.post("/auth/verify-email/confirm", json={"token": token})
        assert confirmed.status_code == 204
        taken = await _register(h, email)
        assert (taken.status_code, error_code(taken)) == (409, "email_taken")


async def test_closing_registration_ends_the_pending_links(
    strict: Harness, smtp: SmtpServer, database_url: str
) -> None:
    email = _fresh("closed-later")
    await _register(strict, email)
    token = await _registration_link(smtp, email)
    closed = mail_settings(database_url, smtp, require_verified_email=True)
    async for h in start_harness(closed):
        refused = await _confirm(h, token)
        assert (refused.status_code, error_code(refused)) == (400, "verification_token_invalid")
        assert await _user_count(h, email) == 0
