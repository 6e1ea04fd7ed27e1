"""A missing engine skips its tests, and fails them under REQUIRE_BROWSER=1 (CI)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.servers import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("required", [False, True], ids=["skips", "fails-in-ci"])
def test_firefox_without_node(required: bool) -> None:
    # Without node on PATH the Firefox bridge cannot run: the engine is missing.
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("REQUIRE_BROWSER", "REQUIRE_POSTGRES")
    }
    env["PATH"] = "/nonexistent"
    if required:
        env["REQUIRE_BROWSER"] = "1"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/engines/test_engines.py", "-q", "-rs"]
        + ["-p", "no:cacheprovider", "-k", "firefox and test_login"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    why = "firefox: not installed (apt-get install nodejs)"
    assert why in result.stdout, result.stdout[-3000:]
    if required:
        assert result.returncode == 1, result.stdout[-3000:]
        assert "REQUIRE_BROWSER=1" in result.stdout
        assert "1 error" in result.stdout
    else:
        assert result.returncode == 0, result.stdout[-3000:]
        assert "1 skipped" in result.stdout
