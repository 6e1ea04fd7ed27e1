"""The first hour on a fresh clone (issue 16): DATABASE_URL in the forms providers print, the
default database wherever the CLI runs, and what `python -m app serve` says at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from app.cli.server import development_issuer
from app.core.settings import Settings
from tests.conftest import TEST_SECRET
from tests.support.cli import run_cli
from tests.support.servers import free_port, wait_listening

ROOT = Path(__file__).resolve().parents[2]


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("postgresql://u:p@db:5432/auth", "postgresql+asyncpg://u:p@db:5432/auth"),
        ("postgres://u:p@db/auth", "postgresql+asyncpg://u:p@db/auth"),
        ("postgresql+asyncpg://u@db/auth", "postgresql+asyncpg://u@db/auth"),
        ("sqlite:////var/lib/auth.db", "sqlite+aiosqlite:////var/lib/auth.db"),
        ("sqlite+aiosqlite:///./auth.db", "sqlite+aiosqlite:///./auth.db"),
    ],
)
def test_database_url_forms_use_the_installed_drivers(given: str, used: str) -> None:
    assert _settings(database_url=given).database_url == used


@pytest.mark.parametrize(
    "given", ["mysql://u@db/auth", "postgresql+psycopg://u@db/auth", "auth.db", ""]
)
def test_other_database_urls_are_refused_naming_the_variable(given: str) -> None:
    with pytest.raises(ValidationError, match="DATABASE_URL must start with postgresql://"):
        _settings(database_url=given)


def test_a_wrong_database_url_is_one_line_from_the_cli() -> None:
    result = run_cli("postgresql+psycopg://u@127.0.0.1/auth", "migrate")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("configuration error: DATABASE_URL:"), line
    assert "postgres://" in line


def test_postgres_scheme_works_end_to_end(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+asyncpg://", "postgres://", 1)
    result = run_cli(plain, "migrate")
    assert result.returncode == 0, result.stderr
    assert "database is at the latest schema" in result.stdout


def test_default_database_is_anchored_to_the_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    url = _settings().database_url
    assert url == f"sqlite+aiosqlite:///{ROOT / 'data' / 'auth.db'}"


def test_serve_from_another_folder_says_where_its_data_is_and_what_next(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": "sqlite:///relative/auth.db",
        "SECRET_KEY": TEST_SECRET,
        "ENVIRONMENT": "development",
        "LOG_FORMAT": "console",
        "LOG_LEVEL": "INFO",
        "PASSWORD_HASH_PROFILE": "test",
        "PRUNE_INTERVAL": "0",
    }
    env.pop("JWT_ISSUER", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if "Application startup complete" in line:
                break
        wait_listening(port, deadline)
        # Without JWT_ISSUER, development advertises where it really listens (it said
        # http://localhost:8000 whatever the port), and tokens name the same issuer.
        doc = httpx.get(f"http://127.0.0.1:{port}/.well-known/oauth-authorization-server").json()
        assert doc["issuer"] == f"http://127.0.0.1:{port}"
        assert doc["jwks_uri"] == f"http://127.0.0.1:{port}/.well-known/jwks.json"
    finally:
        process.terminate()
        process.wait(timeout=15)
    output = "\n".join(lines)
    assert "Application startup complete" in output, output
    assert f"database=sqlite {tmp_path / 'relative' / 'auth.db'}" in output
    assert (tmp_path / "relative" / "auth.db").exists()
    assert f"authsvc listens on http://127.0.0.1:{port}" in output
    assert "python -m app users create EMAIL" in output
    assert f"http://127.0.0.1:{port}/docs" in output
    # No Alembic set-up chatter and no colour copies of uvicorn's messages.
    assert "Context impl" not in output
    assert "non-transactional DDL" not in output
    assert "color_message" not in output
    assert "\x1b" not in output


def _production_serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "ENVIRONMENT": "production",
            "SECRET_KEY": TEST_SECRET,
            "JWT_ISSUER": "https://auth.test",
            "DATABASE_URL": f"sqlite:///{tmp_path}/auth.db",
            "LOG_FORMAT": "console",
            **env,
        },
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_production_refuses_sqlite_with_several_workers(tmp_path: Path) -> None:
    result = _production_serve(tmp_path, "--workers", "2", METRICS_TOKEN="m" * 32)
    assert result.returncode == 2
    [line] = [line for line in result.stderr.splitlines() if "error" in line]
    assert line.startswith("configuration error: --workers 2 with SQLite"), line
    assert not (tmp_path / "auth.db").exists()  # refused before migrating


def test_production_serve_warns_of_each_risky_setting(tmp_path: Path) -> None:
    # The warnings come first; several SQLite workers then stop it before any server starts.
    warned = _production_serve(tmp_path, "--workers", "2", RATE_LIMITS_ENABLED="false")
    assert warned.returncode == 2
    lines = [line for line in warned.stderr.splitlines() if "settings.risky" in line]
    assert [line.split()[2] for line in lines] == [
        "setting=RATE_LIMITS_ENABLED",
        "setting=METRICS_TOKEN",
        "setting=SMTP_URL",
    ]


@pytest.mark.parametrize(
    ("host", "issuer"),
    [
        ("127.0.0.1", "http://127.0.0.1:9000"),
        ("0.0.0.0", "http://localhost:9000"),  # noqa: S104 - the wildcard, as given to serve
        ("::", "http://localhost:9000"),
        ("::1", "http://[::1]:9000"),
        ("auth.local", "http://auth.local:9000"),
    ],
)
def test_the_development_issuer_is_where_the_server_listens(host: str, issuer: str) -> None:
    assert development_issuer(host, 9000) == issuer
