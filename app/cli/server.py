"""serve, migrate, prune."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile

from sqlalchemy.engine import make_url

from app.context import build_context
from app.core import migrate
from app.core.clock import Clock
from app.core.db import create_engine
from app.core.settings import Environment, Settings, get_settings
from app.keys.service import ensure_signing_key


def run(args: argparse.Namespace, settings: Settings) -> str:
    _log.info("service.database", extra={"database": database_location(settings.database_url)})
    if args.command == "migrate":
        asyncio.run(_migrate(settings))
        return "database is at the latest schema"
    if args.command == "prune":
        return asyncio.run(_prune(settings))
    for variable, why in settings.production_warnings:
        _log.warning("settings.risky", extra={"setting": variable, "why": why})
    _refuse_sqlite_workers(args, settings)
    if settings.environment is not Environment.production and not settings.jwt_issuer:
        # Discovery, JWKS and the tokens' iss then name where this server really listens
        # (`make run PORT=9000` kept advertising port 8000). Production requires JWT_ISSUER.
        os.environ["JWT_ISSUER"] = development_issuer(args.host, args.port)
        get_settings.cache_clear()
        settings = get_settings()
    asyncio.run(_migrate(settings))
    if settings.environment is Environment.development:
        print(next_steps(args.host, args.port), file=sys.stderr, flush=True)
    _serve(args, settings)
    return ""


_log = logging.getLogger("app.cli")


def _refuse_sqlite_workers(args: argparse.Namespace, settings: Settings) -> None:
    """Several processes on one SQLite file: each keeps its own session cache and rate-limit
    counters, and writers queue on the file's one lock. Production refuses it."""
    sqlite = make_url(settings.database_url).get_backend_name() == "sqlite"
    if sqlite and args.workers > 1 and settings.environment is Environment.production:
        print(
            f"configuration error: --workers {args.workers} with SQLite (DATABASE_URL): "
            "production runs one worker on SQLite; use PostgreSQL for more",
            file=sys.stderr,
        )
        raise SystemExit(2)


def database_location(database_url: str) -> str:
    """Where the data is, as an operator needs it: SQLite's absolute file path (a relative one
    depends on the folder the command ran in), PostgreSQL's address without the password."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            return f"sqlite {database or ':memory:'}"
        return f"sqlite {os.path.abspath(database)}"
    return url.render_as_string(hide_password=True)


def development_issuer(host: str, port: int) -> str:
    """Where a client on this machine reaches a server bound to `host`: a wildcard address is
    reached as localhost, an IPv6 literal in brackets."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding it
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def next_steps(host: str, port: int) -> str:
    base = f"http://{host}:{port}"
    return (
        f"\nauthsvc listens on {base}. Next:\n"
        "  1. create a user:  python -m app users create EMAIL  (--role admin for /admin)\n"
        f"  2. open {base}/docs, Authorize with that user, and try the routes\n"
    )


def _serve(args: argparse.Namespace, settings: Settings) -> None:
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # Before the workers import prometheus_client: they share samples through it.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="authsvc-metrics-")
    # The workers size their password-hashing pools by it (cores per worker).
    os.environ.setdefault("WEB_CONCURRENCY", str(args.workers))
    import uvicorn

    from app.core.http_protocol import HeadLimitedHttpToolsProtocol

    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        access_log=False,
        # Forwarded headers are handled inside the app, from TRUSTED_PROXIES only.
        proxy_headers=False,
        # httptools, refusing a request head over MAX_REQUEST_HEADER_BYTES with 431; the limit
        # travels to every worker as uvicorn's setting for the same limit under h11.
        http=HeadLimitedHttpToolsProtocol,
        h11_max_incomplete_event_size=settings.max_request_header_bytes,
    )


async def _migrate(settings: Settings) -> None:
    await asyncio.to_thread(migrate.upgrade, settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        await ensure_signing_key(
            engine,
            algorithm=settings.jwt_algorithm.value,
            secret=settings.secret_key.get_secret_value(),
            now=Clock().now(),
        )
    finally:
        await engine.dispose()


async def _prune(settings: Settings) -> str:
    ctx = await build_context(settings, Clock())
    try:
        sessions, tokens = await ctx.sessions.prune(settings.refresh_token_retention)
    finally:
        ctx.passwords.close()
        await ctx.engine.dispose()
    return f"deleted {sessions} sessions and {tokens} refresh tokens"
