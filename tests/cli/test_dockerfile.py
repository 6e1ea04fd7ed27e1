"""No Docker engine runs here: the Dockerfile is checked statically (hadolint and contents)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app.cli import _parser

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
    assert "pip install ." in DOCKERFILE  # the dependency set of pyproject.toml, as the README
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
