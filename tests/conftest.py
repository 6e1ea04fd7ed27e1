"""Fixtures: every test runs through the real app on SQLite and on PostgreSQL.

PostgreSQL comes from TEST_POSTGRES_URL (default: the local server). Without it the PostgreSQL
variants skip, unless REQUIRE_POSTGRES=1 (CI), where a skip becomes a failure. Each test's
database is named TEST_DATABASE_PREFIX (default authsvc_test_) and a random suffix; the tests
that share rate limits through Redis use TEST_REDIS_URL (default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app.account.service import Actor
from app.context import AppContext
from app.core import migrate
from app.core.client import ClientInfo
from app.core.clock import FrozenClock
from app.core.db import UnitOfWork, create_engine
from app.core.logging import JsonFormatter
from app.core.security import PasswordHasher
from app.core.settings import Environment, Settings
from app.main import create_app
from app.users import service as users

if TYPE_CHECKING:
    from tests.support import pgcluster

POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES") == "1"
# Two checkouts (or CI jobs) sharing one server can keep their databases and keys apart.
TEST_DATABASE_PREFIX = os.environ.get("TEST_DATABASE_PREFIX", "authsvc_test_")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PASSWORD = "correct horse battery staple"
TEST_SECRET = "test-secret-key-0123456789abcdefghijklmnopqrstuvwxyz"


_postgres_outcomes: dict[str, int] = {"passed": 0, "skipped": 0, "failed": 0}


_POSTGRES_FIXTURES = frozenset({"postgres_url", "pg_harness"})


def _uses_postgres(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    params = callspec.params.values() if callspec else ()
    fixtures = set(getattr(item, "fixturenames", ()))
    return "postgres" in params or bool(fixtures & _POSTGRES_FIXTURES)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if _uses_postgres(item) and (report.when == "call" or report.skipped):
        _postgres_outcomes[report.outcome] = _postgres_outcomes.get(report.outcome, 0) + 1
    return report


_CLIENT_LOGGERS = ("httpx", "httpcore")


class _LogCapture(logging.Handler):
    """Every log record of the whole run, formatted as production formats it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        # The tests' own HTTP client logs the URLs it requests, including the query-string
        # tokens that tests send on purpose to prove the service ignores them: not ours.
        if record.name.startswith(_CLIENT_LOGGERS):
            return
        self.lines.append(self.format(record))


_LOG_CAPTURE = _LogCapture()
ISSUED_SECRETS: set[str] = set()  # every token the app handed out during the run
_SECRET_PATTERNS = [
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\."),  # a JWT
    re.compile(r"\$argon2id?\$|\$2[aby]\$\d\d\$"),  # a password hash
    re.compile(r"PRIVATE KEY"),
]


def pytest_configure(config: pytest.Config) -> None:
    # The app's own configure_logging is skipped in tests (configure_logs=False): mirror what
    # it does to the driver loggers, then capture everything else at DEBUG.
    logging.getLogger().addHandler(_LOG_CAPTURE)
    logging.getLogger().setLevel(logging.DEBUG)
    for name in ("aiosqlite", "asyncpg"):
        logging.getLogger(name).setLevel(logging.INFO)


# Characters of tokens (base64url and the dots of JWTs and refresh tokens), and how many of a
# token's first characters index it.
_TOKEN_RUN = re.compile(r"[A-Za-z0-9_.\-]+")
_TOKEN_PREFIX = 16


def _literal_finder(literals: set[str]) -> Callable[[str], bool]:
    """Whether a line contains any of the literals: the same answer as `any(x in line for x in
    literals)`, without a substring search per line for each of the run's thousands of tokens
    (that took ~12 s). A literal made of token characters can only occur inside a maximal run of
    them, where it is found by its first characters."""
    by_prefix: dict[str, list[str]] = {}
    others: list[str] = []
    for literal in literals:
        if len(literal) >= _TOKEN_PREFIX and _TOKEN_RUN.fullmatch(literal):
            by_prefix.setdefault(literal[:_TOKEN_PREFIX], []).append(literal)
        else:
            others.append(literal)

    def contains(line: str) -> bool:
        if any(literal in line for literal in others):
            return True
        for run in _TOKEN_RUN.findall(line):
            for i in range(len(run) - _TOKEN_PREFIX + 1):
                for literal in by_prefix.get(run[i : i + _TOKEN_PREFIX], ()):
                    if run.startswith(literal, i):
                        return True
        return False

    return contains


def _secret_leaks() -> list[str]:
    contains_literal = _literal_finder({PASSWORD, TEST_SECRET, "hunter2hunter2", *ISSUED_SECRETS})
    leaks = []
    for line in _LOG_CAPTURE.lines:
        if any(p.search(line) for p in _SECRET_PATTERNS) or contains_literal(line):
            leaks.append(line[:300])
    return leaks


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With REQUIRE_POSTGRES=1 a skipped (or absent) PostgreSQL test fails the run. And no log
    line of the whole run may carry a password, token, hash or key (checklist G46)."""
    if REQUIRE_POSTGRES and (_postgres_outcomes["skipped"] or not _postgres_outcomes["passed"]):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    leaks = _secret_leaks()
    if leaks:
        print(f"\nSECRETS IN LOGS ({len(leaks)} lines), e.g.:\n" + "\n".join(leaks[:5]))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(
        f"log lines checked for secrets: {len(_LOG_CAPTURE.lines)}, "
        f"tokens tracked: {len(ISSUED_SECRETS)}"
    )
    terminalreporter.write_line(
        "postgres tests: {passed} passed, {failed} failed, {skipped} skipped".format(
            **_postgres_outcomes
        )
    )


def _raw_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _create_pg_database() -> str | None:
    try:
        admin = await asyncpg.connect(_raw_dsn(POSTGRES_URL), timeout=5)
    except (OSError, asyncpg.PostgresError):
        return None
    name = f"{TEST_DATABASE_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = POSTGRES_URL.rpartition("/")
    return f"{base}/{name}"


async def _drop_pg_database(url: str) -> None:
    name = url.rpartition("/")[2]
    admin = await asyncpg.connect(_raw_dsn(POSTGRES_URL), timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(params=["postgres"])  # the "postgres" param counts these as PostgreSQL tests
def pg_cluster() -> Iterator[pgcluster.PgCluster]:
    """A private PostgreSQL cluster the test may stop and start (an outage), never the shared
    server: stopping that would break every other test running."""
    # Imported here: tests.support imports this module (a cycle at import time).
    from tests.support.pgcluster import find_bin_dir, private_postgres

    if find_bin_dir() is None:
        message = "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
        if REQUIRE_POSTGRES:
            pytest.fail(message + " and REQUIRE_POSTGRES=1")
        pytest.skip(message)
    with private_postgres() as cluster:
        yield cluster


@pytest.fixture(scope="session")
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, migrated PostgreSQL database for the whole run."""
    url = await _create_pg_database()
    if url is None:
        message = f"PostgreSQL unreachable at {POSTGRES_URL}"
        if REQUIRE_POSTGRES:
            pytest.fail(message + " and REQUIRE_POSTGRES=1")
        pytest.skip(message)
    await asyncio.to_thread(migrate.upgrade, url)
    yield url
    await _drop_pg_database(url)


@pytest.fixture(scope="session")
async def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("sqlite") / "auth.db"
    url = f"sqlite+aiosqlite:///{path}"
    await asyncio.to_thread(migrate.upgrade, url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": Environment.test,
        "database_url": database_url,
        "secret_key": TEST_SECRET,
        "jwt_issuer": "https://auth.test",
        "jwt_audience": "authsvc-test",
        "session_idle_timeout": 3600,
        "session_absolute_lifetime": 8 * 3600,
        "session_touch_interval": 5,
        "refresh_reuse_interval": 30,
        "prune_interval": 0,
        "log_format": "json",
        "rate_limits_enabled": False,  # tests of the limits turn them on
        # Tests revoke sessions behind the app's back (CLI, direct SQL) and expect it at once;
        # the cache's own tests turn it on.
        "session_cache_ttl": 0,
        # Near-free argon2 (refused in production); tests of the real costs ask for "owasp".
        "password_hash_profile": "test",
        # Race tests send hundreds of requests at once and expect each answered; admission
        # control's own tests (tests/core/test_admission.py) set a small limit.
        "admission_max_in_flight": 100_000,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


_OPERATOR = Actor(ClientInfo(), audited=False)  # as the CLI acts


@dataclass
class Harness:
    """The app under test, its client, its frozen clock and its context."""

    app: FastAPI
    client: httpx.AsyncClient
    clock: FrozenClock

    @property
    def ctx(self) -> AppContext:
        ctx: AppContext = self.app.state.ctx
        return ctx

    async def create_user(
        self,
        email: str | None = None,
        password: str = PASSWORD,
        role: str = "user",
        *,
        verified: bool = True,
    ) -> str:
        """An operator's account (its address counts as proven unless `verified` is False)."""
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        uow = UnitOfWork(self.ctx.engine)
        await self.ctx.accounts.create_user(
            uow, email=email, password=password, role=role, verified=verified
        )
        await uow.finish(commit=True)
        return email

    async def set_password(self, email: str, password: str) -> int:
        """An operator's password reset (as `users set-password`): revokes every session."""
        uow = UnitOfWork(self.ctx.engine)
        revoked = await self.ctx.accounts.set_password(uow, _OPERATOR, email, password)
        await uow.finish(commit=True)
        return revoked

    async def set_active(self, email: str, *, active: bool) -> int:
        """An operator's (de)activation (as `users deactivate`): revokes every session."""
        uow = UnitOfWork(self.ctx.engine)
        user = await users.require_by_email(await uow.connection(), email)
        _, revoked = await self.ctx.accounts.set_active(uow, _OPERATOR, user.id, active=active)
        await uow.finish(commit=True)
        return revoked

    async def login(self, email: str, password: str = PASSWORD, **extra: Any) -> dict[str, Any]:
        response = await self.client.post(
            "/auth/login", json={"email": email, "password": password, **extra}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def refresh(self, refresh_token: str) -> httpx.Response:
        return await self.client.post("/auth/refresh", json={"refresh_token": refresh_token})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def error_code(response: httpx.Response) -> str:
    """The stable `error.code` of an error response."""
    code: str = response.json()["error"]["code"]
    return code


async def _remember_issued_tokens(response: httpx.Response) -> None:
    if not response.headers.get("content-type", "").startswith("application/json"):
        return
    await response.aread()
    try:
        body = response.json()
    except ValueError:
        return
    if isinstance(body, dict):
        for key in ("access_token", "refresh_token"):
            if isinstance(body.get(key), str):
                ISSUED_SECRETS.add(body[key])
    for cookie in response.headers.get_list("set-cookie"):
        value = cookie.split(";", 1)[0].partition("=")[2]
        if len(value) >= 40:
            ISSUED_SECRETS.add(value)


async def start_harness(
    settings: Settings,
    root_path: str = "",
    *,
    passwords: PasswordHasher | None = None,
    engine: AsyncEngine | None = None,
) -> AsyncIterator[Harness]:
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    app = create_app(
        settings, clock=clock, engine=engine, configure_logs=False, passwords=passwords
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000), root_path=root_path)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://testserver",
            event_hooks={"response": [_remember_issued_tokens]},
        ) as client:
            yield Harness(app=app, client=client, clock=clock)


@pytest.fixture(scope="session")
async def shared_engines() -> AsyncIterator[dict[str, AsyncEngine]]:
    """One engine (connection pool) per database for the whole run, as one service process
    has: each test's app then starts without opening connections of its own."""
    engines: dict[str, AsyncEngine] = {}
    yield engines
    for engine in engines.values():
        await engine.dispose()


@pytest.fixture
async def harness(
    database_url: str, shared_engines: dict[str, AsyncEngine]
) -> AsyncIterator[Harness]:
    if database_url not in shared_engines:
        shared_engines[database_url] = create_engine(database_url)
    engine = shared_engines[database_url]
    async for h in start_harness(make_settings(database_url), engine=engine):
        yield h


@pytest.fixture
async def pg_harness(postgres_url: str) -> AsyncIterator[Harness]:
    """For behaviour that needs real concurrent connections (row locks, races)."""
    async for h in start_harness(make_settings(postgres_url)):
        yield h
