"""Browser mode in three engines (Chromium, Firefox ESR, WebKit) and HTTPS serving.

Engines come from Debian packages only (never a downloaded browser build). One that is not
installed skips its tests; REQUIRE_BROWSER=1 (CI) turns that into a failure, as for
tests/browser. The figures each run measured (scenarios passed, refreshes per token lifetime
with three tabs, run time) close the pytest output.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.cli.tls import dev_certificate
from app.core import migrate
from bench.processes import output_file, output_tail, stop_process
from tests.engines import drivers
from tests.support.servers import ROOT, free_port, server_env

REQUIRE_BROWSER = os.environ.get("REQUIRE_BROWSER") == "1"
ENGINES = ["chromium", "firefox", "webkit"]
ACCESS_TTL = 5  # seconds: tokens expire several times while the scenarios run
IDLE_TIMEOUT = 10  # the shortest the settings allow
SERVICE_ENV = {
    "ACCESS_TOKEN_TTL": str(ACCESS_TTL),
    "JWT_LEEWAY": "0",  # an expired token is refused at once, as in the worst deployment
    "SESSION_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
    "SESSION_TOUCH_INTERVAL": "1",
    "CORS_ORIGINS": '["http://localhost:9"]',  # CORS on; no test page's origin is in it
    # Five scenarios' tabs share one SQLite process (4 requests in flight) on two busy cores:
    # a request waits for its turn rather than meeting 503 overloaded, which is not under test.
    "ADMISSION_MAX_WAIT_MS": "10000",
}

# What the runs measured, per engine, for the closing summary.
FIGURES: dict[str, dict[str, Any]] = defaultdict(dict)
_OUTCOMES: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
_STARTED: dict[str, float] = {}


@dataclass(frozen=True)
class Service:
    base: str  # what the pages open: http(s)://localhost:<port>
    other_origin: str  # the same server as another site: http(s)://127.0.0.1:<port>
    database_url: str


@contextlib.contextmanager
def page_server(database_url: str, certs: Path | None) -> Iterator[Service]:
    """The service (tests/engines/page_app.py: the real app plus the test pages) in its own
    uvicorn process, over HTTPS with the development certificate when `certs` is given."""
    port = free_port()
    tls: list[str] = []
    if certs is not None:
        made = dev_certificate(certs)
        tls = ["--ssl-certfile", str(made.certfile), "--ssl-keyfile", str(made.keyfile)]
    command = ["uvicorn", "tests.engines.page_app:create_app", "--factory"]
    output = output_file()
    process = subprocess.Popen(
        [sys.executable, "-m", *command, "--host", "127.0.0.1", "--port", str(port), *tls],
        cwd=ROOT,
        env=server_env(database_url, **SERVICE_ENV),
        stdout=subprocess.DEVNULL,
        stderr=output,
    )
    scheme = "https" if certs else "http"
    try:
        give_up = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"service exited: {output_tail(output)}")
            with contextlib.suppress(httpx.HTTPError):
                url = f"{scheme}://127.0.0.1:{port}/healthz"
                if httpx.get(url, verify=False, timeout=1).status_code == 200:  # noqa: S501
                    break
            assert time.monotonic() < give_up, "the service did not start"
            time.sleep(0.1)
        yield Service(
            base=f"{scheme}://localhost:{port}",
            other_origin=f"{scheme}://127.0.0.1:{port}",
            database_url=database_url,
        )
    finally:
        stop_process(process)
        output.close()


@contextlib.asynccontextmanager
async def open_engine(name: str) -> AsyncIterator[drivers.Engine]:
    if name == "chromium":
        async with drivers.chromium() as engine:
            yield engine
    elif name == "firefox":
        async with drivers.firefox() as engine:
            yield engine
    else:
        async with drivers.webkit() as engine:
            yield engine


@dataclass(frozen=True)
class Bench:
    """One engine and the service it tests: over HTTPS for WebKit, which drops `Secure`
    cookies on http://localhost (WebKit bug 281149); over http://localhost for the others,
    which treat it as a secure context."""

    engine: drivers.Engine
    service: Service


@pytest.fixture(scope="module", params=ENGINES)
async def bench(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Bench]:
    name: str = request.param
    why = drivers.missing(name)
    if why is not None:
        if REQUIRE_BROWSER:
            pytest.fail(f"{why} and REQUIRE_BROWSER=1")
        pytest.skip(why)
    folder = tmp_path_factory.mktemp(f"engine-{name}")
    database_url = f"sqlite+aiosqlite:///{folder / 'auth.db'}"
    await asyncio.to_thread(migrate.upgrade, database_url)
    certs = folder / "tls" if name == "webkit" else None
    _STARTED[name] = time.monotonic()
    with page_server(database_url, certs) as service:
        async with open_engine(name) as engine:
            yield Bench(engine=engine, service=service)
    FIGURES[name]["run time (s)"] = round(time.monotonic() - _STARTED[name], 1)
    FIGURES[name]["version"] = engine.version


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "tests/engines/test_engines.py" not in report.nodeid or "[" not in report.nodeid:
        return
    engine = report.nodeid.rsplit("[", 1)[1].split("-")[0].rstrip("]")
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _OUTCOMES[engine][report.outcome] += 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _OUTCOMES:
        return
    terminalreporter.write_sep("-", "browser engines")
    for engine in ENGINES:
        if engine not in _OUTCOMES:
            continue
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(_OUTCOMES[engine].items()))
        figures = "; ".join(f"{k}: {v}" for k, v in FIGURES.get(engine, {}).items())
        terminalreporter.write_line(f"{engine}: scenarios {counts}; {figures}")
