"""Engine construction, the UTC timestamp type, and the table metadata root."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
from sqlalchemy import DateTime, Table, event, make_url
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import greenlet_spawn

from app.core.errors import is_database_unavailable
from app.core.settings import Settings


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC (SQLite has no time zones) and always returns aware UTC datetimes.

    All comparisons happen against parameters that pass through this same type, so SQLite's
    string ordering and PostgreSQL's timestamptz ordering agree.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


def create_engine(
    database_url: str,
    *,
    pool_size: int = 10,
    pool_timeout: float = 5.0,
    serving_requests: bool = False,
    transaction_pooled: bool = False,
) -> AsyncEngine:
    """The service's engine (`serving_requests`): a request that meets a database failure
    answers 503 within `pool_timeout` (docs/deploy.md, Database outages; see
    `_postgres_timeouts`). Other engines (migrations, CLI commands) may run long statements:
    they wait up to `pool_timeout` for a connection and 30 s for a statement.
    `transaction_pooled`: DATABASE_URL is a transaction-mode pooler (see `_pooler_safe`)."""
    if database_url.startswith("sqlite"):
        return _create_sqlite_engine(database_url, pool_timeout)
    if serving_requests:
        wait, connect_args = _postgres_timeouts(pool_timeout)
    else:
        wait, connect_args = pool_timeout, {"timeout": pool_timeout, "command_timeout": 30}
    if transaction_pooled:
        database_url, connect_args = _pooler_safe(database_url, connect_args)
    return create_async_engine(
        database_url,
        hide_parameters=True,  # error messages must never carry emails, hashes or tokens
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=wait,
        # No pre-ping: it costs a round trip per checkout on the hot path. A connection that
        # died is invalidated by SQLAlchemy on first use; that request answers 503 and the pool
        # reconnects for the next one.
        connect_args=connect_args,
    )


def _postgres_timeouts(bound: float) -> tuple[float, dict[str, Any]]:
    """(pool wait, asyncpg connect arguments) so that a request answers within `bound`.

    A request that fails meets at most a wait for a pooled connection, then one connect or one
    statement: each gets 45 % of the bound (the rest is the request's own work and the event
    loop's delays: at a bound of 2 s a frozen server was answered in 2.08 s with halves). A
    frozen server (SIGSTOP, a hung host) keeps its TCP connections open and answers nothing, so
    only the client's own timeouts end the wait: asyncpg's connect `timeout` and
    `command_timeout` (every statement, BEGIN and COMMIT included). The server's
    `statement_timeout` (35 %) fires first, so that a live but slow server cancels the
    statement itself (its locks released, the connection kept) rather than the client
    abandoning it.
    """
    step = bound * 0.45
    statement_ms = max(1, int(bound * 0.35 * 1000))
    return step, {
        "timeout": step,
        "command_timeout": step,
        "server_settings": {"statement_timeout": str(statement_ms)},
    }


def engine_for(settings: Settings, **options: Any) -> AsyncEngine:
    """The engine for DATABASE_URL as the settings describe it (what sits in front of it);
    `options` as `create_engine` takes them."""
    return create_engine(
        settings.database_url, transaction_pooled=settings.transaction_pooled, **options
    )


def _pooler_safe(database_url: str, connect_args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Behind a transaction-mode pooler each transaction (and each statement outside one) may
    run on another server connection: a named prepared statement made on one is unknown on
    the next ("prepared statement ... does not exist"). So no statement is kept: asyncpg's
    cache and SQLAlchemy's are off, and SQLAlchemy prepares each statement unnamed, which
    PostgreSQL replaces at the next statement on that connection, so nothing piles up on the
    server connections (named ones with fresh names would). PgBouncer also refuses startup
    parameters it does not know, statement_timeout among them: set it on the role instead
    (docs/scaling.md); asyncpg's command_timeout still bounds every statement."""
    url = make_url(database_url).update_query_dict({"prepared_statement_cache_size": "0"})
    safe = {key: value for key, value in connect_args.items() if key != "server_settings"}
    safe["statement_cache_size"] = 0
    safe["prepared_statement_name_func"] = _unnamed
    return url.render_as_string(hide_password=False), safe


def _unnamed() -> str:
    return ""


def _create_sqlite_engine(database_url: str, pool_timeout: float) -> AsyncEngine:
    # SQLite allows one writer; a single pooled connection serialises transactions in the
    # application instead of surfacing "database is locked" to a user mid-refresh.
    engine = create_async_engine(
        database_url,
        hide_parameters=True,
        pool_size=1,
        max_overflow=0,
        pool_timeout=max(pool_timeout, 30.0),
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from pysqlite so BEGIN is emitted when SQLAlchemy
        # begins, as the SQLAlchemy docs recommend for correct transactional behaviour.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


@contextlib.asynccontextmanager
async def autocommit_connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection whose statements each commit on their own: no BEGIN/ROLLBACK round trips.

    For hot paths made of single self-contained statements (a read, a conditional UPDATE).
    SQLite keeps its serialising transaction instead (one writer, see `_create_sqlite_engine`).
    """
    async with engine.connect() as conn:
        if engine.dialect.name != "sqlite":
            await conn.execution_options(isolation_level="AUTOCOMMIT")
        yield conn
        if conn.in_transaction():
            await conn.commit()


def on_asyncpg(engine: AsyncEngine) -> bool:
    """Whether `driver_connection` (and the hot paths' single statements) can be used."""
    return engine.dialect.driver == "asyncpg"


@contextlib.asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """A pooled connection's own asyncpg connection, outside any transaction (each statement
    commits on its own), for a hot path that is one statement: SQLAlchemy's execution path
    costs more than the statement there (docs/performance.md). PostgreSQL only.

    Straight from the pool (one greenlet hop each way, no Connection object). A connection
    that failed, or was cancelled mid-statement, is invalidated so the pool replaces it
    instead of handing it to the next request.
    """
    try:
        pooled = await engine.raw_connection()
    except Exception as exc:
        # Connecting raises SQLAlchemy's adapter error around the driver's (e.g. "the database
        # system is starting up"), unwrapped on this path: give it the type an engine's
        # connect() would, so the error handlers answer 503 instead of 500.
        if exc.__cause__ is not None and is_database_unavailable(exc.__cause__):
            raise OperationalError("connect", None, exc) from exc
        raise
    raw: Any = pooled.driver_connection
    try:
        yield raw
    except BaseException as exc:
        if not isinstance(exc, asyncpg.PostgresError) or raw.is_closed() or server_gone(exc):
            await greenlet_spawn(pooled.invalidate)
        raise
    finally:
        await greenlet_spawn(pooled.close)


def server_gone(exc: asyncpg.PostgresError) -> bool:
    """Whether the error is the connection's or the server's (a shutdown, a restart, a
    cancelled statement), rather than the statement's own."""
    # 08 connection exception, 57 operator intervention (shutdown, restart, query_canceled)
    return str(exc.sqlstate or "")[:2] in {"08", "57"}


def table_of(model: type[Base]) -> Table:
    """The model's Table, typed as one (SQLAlchemy types `__table__` as a FromClause)."""
    return cast(Table, model.__table__)


class UnitOfWork:
    """One transaction per request, opened only when first needed.

    Lazy so that work done before any write (verifying a password for ~20 ms) holds neither a
    pooled connection nor, on SQLite, the database's single write lock.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._after_commit: list[Callable[[], None]] = []

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` once the transaction has committed (e.g. drop cached state that the
        committed change made stale; running it earlier would let a concurrent request
        re-cache the old state)."""
        self._after_commit.append(callback)

    async def connection(self) -> AsyncConnection:
        if self._conn is None:
            conn = self._engine.connect()
            await conn.start()
            try:
                await conn.begin()
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def finish(self, *, commit: bool) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if commit:
                await conn.commit()
            else:
                await conn.rollback()
        finally:
            await conn.close()
        callbacks, self._after_commit = self._after_commit, []
        if commit:
            for callback in callbacks:
                callback()


@contextlib.asynccontextmanager
async def committed_unit(engine: AsyncEngine) -> AsyncIterator[UnitOfWork]:
    """A unit of work of its own, committed when the block ends (rolled back if it raises):
    for a claim that must be durable before slow work starts, apart from the request's own
    unit of work (which commits only when the request is done)."""
    uow = UnitOfWork(engine)
    try:
        yield uow
    except BaseException:
        await uow.finish(commit=False)
        raise
    else:
        await uow.finish(commit=True)
