"""A mail server that freezes (SIGSTOP: its TCP connections stay open, it answers nothing)
holds up no request and loses no message: the routes that write email answer as usual (the
email is an outbox row), the worker's attempt ends at SMTP_TIMEOUT and is retried, and the
message arrives once the server runs again. A real aiosmtpd process, storing into a Maildir."""

from __future__ import annotations

import asyncio
import mailbox
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.processes import free_port, output_file, output_tail, stop_process
from tests.conftest import Harness, make_settings, start_harness
from tests.outbox.conftest import outbox_rows
from tests.support.receiver import eventually

SMTP_TIMEOUT = 1.0


class MailServerProcess:
    def __init__(self, maildir: Path) -> None:
        self.port = free_port()
        self.maildir = maildir
        self._output = output_file()
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "aiosmtpd",
                "-n",
                "-c",
                "aiosmtpd.handlers.Mailbox",
                "-l",
                f"127.0.0.1:{self.port}",
                str(maildir),
            ],
            stdout=self._output,
            stderr=self._output,
        )

    def wait_listening(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"aiosmtpd did not listen: {output_tail(self._output)}")

    def recipients(self) -> list[str]:
        if not self.maildir.exists():
            return []
        return [str(message["To"]) for message in mailbox.Maildir(self.maildir)]

    def stop(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        stop_process(self.process)
        self._output.close()


@pytest.fixture
def mail_server(tmp_path: Path) -> Iterator[MailServerProcess]:
    server = MailServerProcess(tmp_path / "maildir")
    try:
        server.wait_listening()
        yield server
    finally:
        server.stop()


def _settings(database_url: str, server: MailServerProcess) -> Any:
    return make_settings(
        database_url,
        smtp_url=f"smtp://127.0.0.1:{server.port}",
        smtp_timeout=SMTP_TIMEOUT,
        mail_from="Auth Test <no-reply@auth.test>",
        outbox_poll_interval=0.2,
        outbox_retry_base=1.0,
        outbox_retry_max=2.0,
    )


async def _reset_mail_rows(h: Harness, email: str) -> list[Any]:
    return [r for r in await outbox_rows(h) if r.kind == "email" and r.payload["to"] == email]


@pytest.fixture
async def h(database_url: str, mail_server: MailServerProcess) -> AsyncIterator[Harness]:
    async for harness in start_harness(_settings(database_url, mail_server)):
        yield harness


async def test_a_frozen_mail_server_holds_up_no_request_and_loses_no_mail(
    h: Harness, mail_server: MailServerProcess
) -> None:
    email = await h.create_user()
    os.kill(mail_server.process.pid, signal.SIGSTOP)
    started = time.monotonic()
    answer = await h.client.post("/auth/password-reset/request", json={"email": email})
    answered_in = time.monotonic() - started
    assert answer.status_code == 202, answer.text
    assert answered_in < SMTP_TIMEOUT, answered_in  # the request never met the server

    async def timed_out() -> bool:
        rows = await _reset_mail_rows(h, email)
        return bool(rows) and rows[0].attempts >= 1 and rows[0].last_error == "timeout"

    frozen_at = time.monotonic()
    await eventually(timed_out, what="an attempt ended by SMTP_TIMEOUT")
    # The first attempt starts within a poll interval and ends at the timeout.
    assert time.monotonic() - frozen_at < SMTP_TIMEOUT + 3
    [row] = await _reset_mail_rows(h, email)
    assert (row.delivered_at, row.gave_up_at) == (None, None)

    os.kill(mail_server.process.pid, signal.SIGCONT)
    h.clock.advance(3)  # past the retry delay (OUTBOX_RETRY_MAX 2 s)
    h.ctx.outbox.wake()
    # Other tests' leftover mail may come too (the run's database is shared): count ours.
    await eventually(lambda: email in mail_server.recipients(), what="the mail, later")

    async def delivered() -> bool:
        rows = await _reset_mail_rows(h, email)
        return rows[0].delivered_at is not None

    await eventually(delivered, what="the delivery recorded")
    await asyncio.sleep(0.5)
    assert mail_server.recipients().count(email) == 1  # once
