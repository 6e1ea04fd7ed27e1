"""No Docker engine runs here: the Dockerfile is checked statically (hadolint and contents)."""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from app.cli import _parser
from app.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint") or str(ROOT / ".venv/bin/hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint not installed: it is a dev dependency (pip install -e '.[dev]')")
    result = subprocess.run(
        [hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_slim_non_root_with_healthcheck() -> None:
    froms = re.findall(r"^FROM (\S+)", DOCKERFILE, re.M)
    assert len(froms) == 2
    assert all("slim" in image for image in froms)
    user = re.findall(r"^USER (\S+)", DOCKERFILE, re.M)
    assert user
    assert not user[-1].startswith(("root", "0"))
    assert re.search(r"^HEALTHCHECK .*\n?.*?/healthz", DOCKERFILE, re.M | re.S)


def test_installs_the_project_and_runs_an_existing_command() -> None:
    # Pinned, hash-checked dependencies first; then the project, resolving nothing more.
    assert "pip install --require-hashes --no-deps -r requirements.lock" in DOCKERFILE
    assert "pip install --no-deps ." in DOCKERFILE
    cmd = re.search(r"^CMD \[(.*)\]", DOCKERFILE, re.M)
    assert cmd is not None
    assert "python -m app serve" in cmd.group(1)
    argv = ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]  # noqa: S104
    args = _parser().parse_args(argv)
    assert args.command == "serve"
    assert args.workers == 2
    for path in ("alembic.ini", "migrations", "app"):
        assert f"COPY --chown=root:root {path}" in DOCKERFILE
        assert (ROOT / path).exists()


def _requirement_names(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)", line.strip())
        if match:
            names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


def test_the_lock_pins_every_runtime_dependency_with_hashes() -> None:
    """The image installs requirements.lock with --require-hashes: every dependency of
    pyproject.toml must be in it, pinned, with a hash (regenerate it with the command in its
    header after changing the dependencies)."""
    lock = (ROOT / "requirements.lock").read_text()
    pins = re.findall(
        r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}.*\n)+)",
        lock,
        re.M,
    )
    pinned = {re.sub(r"[-_.]+", "-", name).lower() for name, _, _ in pins}
    entries = re.findall(r"^[A-Za-z0-9]", lock, re.M)
    assert len(pins) == len(entries), "every entry pinned with == and at least one hash"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = _requirement_names(pyproject["project"]["dependencies"])
    assert wanted <= pinned, wanted - pinned


def test_the_production_env_example_is_a_production_configuration(tmp_path: Path) -> None:
    """deploy/production.env.example, filled in, starts in production mode and writes where the
    image lets it (the development .env.example does neither)."""
    values = {}
    for line in (ROOT / "deploy/production.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    fields = {name.upper() for name in Settings.model_fields}
    assert set(values) <= fields, set(values) - fields
    assert values["ENVIRONMENT"] == "production"
    placeholders = sorted(name for name, value in values.items() if value.startswith("<"))
    assert placeholders == ["DATABASE_URL", "JWT_ISSUER", "METRICS_TOKEN", "SECRET_KEY"]
    filled = {
        **values,
        "SECRET_KEY": secrets.token_urlsafe(48),
        "METRICS_TOKEN": secrets.token_urlsafe(32),
        "JWT_ISSUER": "https://auth.example.com",
        "DATABASE_URL": "sqlite+aiosqlite:////data/auth.db",
    }
    given: dict[str, Any] = {k.lower(): v for k, v in filled.items() if v}
    settings = Settings(_env_file=None, **given)
    assert settings.environment.value == "production"
    assert (
        "sqlite+aiosqlite:////data/auth.db" in (ROOT / "deploy/production.env.example").read_text()
    )
    assert re.search(r"^VOLUME \[\"/data\"\]", DOCKERFILE, re.M)
