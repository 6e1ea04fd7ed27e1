"""`python -m app mail test ADDRESS`: one message now, through the configured transport."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.mail.conftest import SmtpServer
from tests.support.cli import cli
from tests.support.servers import free_port


async def test_mail_test_sends_through_smtp_url(sqlite_url: str, smtp: SmtpServer) -> None:
    env = {"SMTP_URL": smtp.url, "MAIL_FROM": "Auth Test <no-reply@auth.test>"}
    sent = await cli(sqlite_url, "mail", "test", "ops@example.com", env=env)
    assert sent.returncode == 0, sent.stderr
    assert f"sent to ops@example.com via smtp://127.0.0.1:{smtp.port}" in sent.stdout
    [message] = smtp.mailbox.to("ops@example.com")
    assert message["Subject"] == "authsvc: test message"
    assert str(message["Message-ID"]).endswith("@auth.test>")


async def test_mail_test_names_the_failure_without_the_password(sqlite_url: str) -> None:
    env = {"SMTP_URL": f"smtp://authsvc:hunter2hunter2@127.0.0.1:{free_port()}"}
    failed = await cli(sqlite_url, "mail", "test", "ops@example.com", env=env)
    assert failed.returncode == 1
    assert "the test message was not sent (connect_error) via smtp://127.0.0.1:" in failed.stderr
    assert "hunter2" not in failed.stderr + failed.stdout
    assert "Traceback" not in failed.stderr


async def test_mail_test_without_smtp_url_writes_a_file(sqlite_url: str, tmp_path: Path) -> None:
    written = await cli(
        sqlite_url, "mail", "test", "ops@example.com", env={"MAIL_DIR": str(tmp_path)}
    )
    assert written.returncode == 0, written.stderr
    assert f"written to {tmp_path} (SMTP_URL is unset)" in written.stdout
    assert len(await asyncio.to_thread(lambda: list(tmp_path.glob("*.eml")))) == 1
