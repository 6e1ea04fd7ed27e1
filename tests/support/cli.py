"""`python -m app ...` run as a real process, as an operator runs it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import TEST_SECRET

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    database_url: str, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SECRET_KEY": TEST_SECRET,
        "ENVIRONMENT": "test",
        "LOG_LEVEL": "WARNING",
        "PASSWORD_HASH_PROFILE": "test",  # near-free argon2, as make_settings
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


async def cli(
    database_url: str, *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command in a thread, so the app under test keeps serving meanwhile. `env`: more
    settings, over the defaults."""
    return await asyncio.to_thread(run_cli, database_url, *args, stdin=stdin, env=env)
