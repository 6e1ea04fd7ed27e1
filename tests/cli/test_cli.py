"""The command line, run as a real process against both engines."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from app.cli import parse
from tests.conftest import Harness, bearer
from tests.support.cli import cli


async def test_users_create_deactivate_activate_set_password(
    harness: Harness, database_url: str
) -> None:
    email = f"cli-{uuid.uuid4().hex[:8]}@Example.com"
    created = await cli(
        database_url, "users", "create", email, "--role", "admin", stdin="first password\n"
    )
    assert created.returncode == 0, created.stderr
    assert email.lower() in created.stdout
    assert "first password" not in created.stdout + created.stderr

    tokens = await harness.login(email.lower(), "first password")
    me = await harness.client.get("/auth/me", headers=bearer(tokens["access_token"]))
    assert me.json()["role"] == "admin"

    duplicate = await cli(database_url, "users", "create", email, stdin="first password\n")
    assert duplicate.returncode == 1
    assert "email_taken" in duplicate.stderr

    deactivated = await cli(database_url, "users", "deactivate", email)
    assert deactivated.returncode == 0, deactivated.stderr
    assert "1 sessions revoked" in deactivated.stdout
    me = await harness.client.get("/auth/me", headers=bearer(tokens["access_token"]))
    assert me.json()["error"]["code"] == "session_revoked"
    refused = await harness.client.post(
        "/auth/login", json={"email": email, "password": "first password"}
    )
    assert refused.json()["error"]["code"] == "invalid_credentials"

    assert (await cli(database_url, "users", "activate", email)).returncode == 0
    tokens = await harness.login(email, "first password")
    changed = await cli(database_url, "users", "set-password", email, stdin="second password\n")
    assert changed.returncode == 0, changed.stderr
    assert (await harness.refresh(tokens["refresh_token"])).json()["error"][
        "code"
    ] == "session_revoked"
    await harness.login(email, "second password")


async def test_cli_errors_are_clear(database_url: str) -> None:
    missing, short = await asyncio.gather(  # independent: two processes at once
        cli(database_url, "users", "deactivate", "nobody@example.com"),
        cli(database_url, "users", "create", "short@example.com", stdin="short\n"),
    )
    assert missing.returncode == 1
    assert "user_not_found" in missing.stderr
    assert short.returncode == 1
    assert "invalid_password" in short.stderr
    assert "Traceback" not in missing.stderr + short.stderr


async def test_migrate_from_empty_and_prune(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/nested/dir/fresh.db"
    first = await cli(url, "migrate")
    assert first.returncode == 0, first.stderr
    again = await cli(url, "migrate")  # idempotent
    assert again.returncode == 0, again.stderr
    pruned = await cli(url, "prune")
    assert pruned.returncode == 0, pruned.stderr
    assert "deleted 0 sessions" in pruned.stdout


async def test_production_refuses_to_start_with_dev_secret(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ENVIRONMENT": "production",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db",
    }
    env.pop("SECRET_KEY", None)
    env.pop("JWT_ISSUER", None)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "app", "migrate"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "SECRET_KEY" in result.stderr
    assert "JWT_ISSUER" in result.stderr


@pytest.mark.parametrize("kid", ["-5Kx0aQ", "--x", "plain", "-h2"])
def test_keys_revoke_takes_a_kid_that_starts_with_a_dash(kid: str) -> None:
    """A kid is base64url: one in 64 starts with "-" (a flaky CI run found it)."""
    args = parse(["keys", "revoke", kid])
    assert args.kid == kid
