"""Issue 20: the service through PgBouncer in transaction pooling mode (Debian's `pgbouncer`, 3
server connections for many more clients, so one client's transactions land on different
server connections). With DATABASE_POOLER=transaction: no prepared statement outlives its
transaction, migrations run through the pooler, a refresh race still has one successor, and
revocation push keeps its LISTEN on DATABASE_DIRECT_URL (PostgreSQL itself)."""

from __future__ import annotations

import asyncio
import secrets
import statistics
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sqlalchemy import text

from app.core import migrate
from app.core.db import create_engine
from app.core.settings import DatabasePooler, Environment
from tests.conftest import (
    _create_pg_database,
    _drop_pg_database,
    bearer,
    make_settings,
    start_harness,
)
from tests.sessions.test_revocation_push import (
    ENV as PUSH_ENV,
)
from tests.sessions.test_revocation_push import (
    _engine,
    _figures,
    _listener_backend,
    _logout,
    _trial,
)
from tests.support.pgbouncer import pgbouncer, require_pgbouncer, through
from tests.support.servers import create_user_in, started_together, uvicorn_server

pytestmark = pytest.mark.slow
CLIENTS = 12  # concurrent client connections, against 3 server connections


@pytest.fixture
async def fresh_database() -> AsyncIterator[str]:
    """A new, empty PostgreSQL database (PostgreSQL's own address)."""
    url = await _create_pg_database()
    if url is None:
        pytest.fail("PostgreSQL unreachable")
    yield url
    await _drop_pg_database(url)


@pytest.fixture
def bouncer(fresh_database: str) -> Iterator[str]:
    """The fresh database through PgBouncer."""
    require_pgbouncer()
    with pgbouncer(fresh_database) as port:
        yield through(fresh_database, port)


async def _queries_failing(url: str, *, transaction_pooled: bool) -> list[str]:
    """Errors of CLIENTS connections each running the same statements 20 times, in
    transactions and outside them (autocommit), as the service's paths do."""
    engine = create_engine(url, pool_size=CLIENTS, transaction_pooled=transaction_pooled)
    errors: list[str] = []

    async def client(number: int) -> None:
        for round_ in range(20):
            try:
                async with engine.begin() as conn:
                    value = await conn.scalar(
                        text("SELECT CAST(:a AS int) + CAST(:b AS int)"),
                        {"a": number, "b": round_},
                    )
                    assert value == number + round_
                async with engine.connect() as conn:
                    auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    assert (
                        await auto.scalar(text("SELECT CAST(:a AS int)"), {"a": round_}) == round_
                    )
            except Exception as exc:  # the failures are what this counts
                errors.append(type(exc).__name__ + ": " + str(exc).splitlines()[0])

    try:
        await asyncio.gather(*(client(n) for n in range(CLIENTS)))
    finally:
        await engine.dispose()
    return errors


@pytest.mark.parametrize("kind", ["postgres"])
async def test_statements_survive_transaction_pooling_only_with_the_setting(
    bouncer: str, kind: str
) -> None:
    """The control first: the default engine's named, cached prepared statements break
    behind the pooler. Then the same work with DATABASE_POOLER=transaction: no error."""
    default = await _queries_failing(bouncer, transaction_pooled=False)
    assert default, "the default engine did not trip over the pooler: this test proves nothing"
    assert any("prepared statement" in error for error in default), default[:3]
    assert await _queries_failing(bouncer, transaction_pooled=True) == []


@pytest.mark.parametrize("kind", ["postgres"])
async def test_migrations_login_refresh_race_and_logout_through_pgbouncer(
    bouncer: str, fresh_database: str, kind: str
) -> None:
    await asyncio.to_thread(migrate.upgrade, bouncer, transaction_pooled=True)
    settings = make_settings(bouncer, database_pooler=DatabasePooler.transaction)
    async for h in start_harness(settings):
        tokens = await h.login(await h.create_user())
        me = await h.client.get("/auth/me", headers=bearer(tokens["access_token"]))
        assert me.status_code == 200, me.text

        # 50 parallel refreshes of one token over 10 pooled connections and 3 server ones.
        race = await asyncio.gather(*(h.refresh(tokens["refresh_token"]) for _ in range(50)))
        assert [r.status_code for r in race] == [200] * 50, [r.text for r in race][:3]
        successors = {r.json()["refresh_token"] for r in race}
        assert len(successors) == 1
        async with h.ctx.engine.connect() as conn:
            rows = await conn.scalar(
                text("SELECT count(*) FROM refresh_tokens WHERE session_id = :sid"),
                {"sid": tokens["session"]["id"]},
            )
        assert rows == 2  # the login's token and exactly one successor
        following = await h.refresh(successors.pop())
        assert following.status_code == 200, following.text

        new = following.json()
        logout = await h.client.post("/auth/logout", headers=bearer(new["access_token"]))
        assert logout.status_code == 204
        after = await h.client.get("/auth/me", headers=bearer(new["access_token"]))
        assert after.status_code == 401


@pytest.mark.parametrize("kind", ["postgres"])
async def test_revocation_push_listens_on_the_direct_url(
    bouncer: str, fresh_database: str, kind: str
) -> None:
    """Two `serve` processes whose requests go through PgBouncer and whose LISTEN goes to
    PostgreSQL: a logout on A is refused by B within 50 ms (median), as without a pooler."""
    # Both migrate the empty database as they start (on the direct URL): one waits for the
    # other's migration lock.
    env = {
        **PUSH_ENV,
        "DATABASE_POOLER": "transaction",
        "DATABASE_DIRECT_URL": fresh_database,
    }
    with started_together(
        uvicorn_server(bouncer, env=env, serve=True),
        uvicorn_server(bouncer, env=env, serve=True),
    ) as [(a, _), (b, b_process)]:
        async for engine in _engine(fresh_database):
            await _listener_backend(engine, b_process.pid)
        email = await create_user_in(fresh_database, prefix="pooled")
        async with httpx.AsyncClient(timeout=10) as client:
            delays = [await _trial(client, a, b, email, _logout, 1.0) for _ in range(10)]
    print(f"\nthrough PgBouncer, logout on A -> B refuses: {_figures(delays)} (10 trials)")
    assert statistics.median(delays) <= 0.050, _figures(delays)


def test_a_transaction_pooler_needs_postgresql() -> None:
    with pytest.raises(ValueError, match="DATABASE_POOLER=transaction needs a PostgreSQL"):
        make_settings("sqlite+aiosqlite:///x.db", database_pooler=DatabasePooler.transaction)


def test_production_names_a_pooler_without_a_direct_url() -> None:
    settings = make_settings(
        "postgresql://postgres@127.0.0.1:6432/authsvc",
        database_pooler=DatabasePooler.transaction,
        environment=Environment.production,
        jwt_issuer="https://auth.example.com",
        secret_key=secrets.token_urlsafe(48),
        password_hash_profile="owasp",
    )
    named = [variable for variable, _ in settings.production_warnings]
    assert "DATABASE_DIRECT_URL" in named
    direct = settings.model_copy(update={"database_direct_url": "postgresql+asyncpg://pg/db"})
    assert "DATABASE_DIRECT_URL" not in [variable for variable, _ in direct.production_warnings]
