"""serve, migrate, prune."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from sqlalchemy.engine import make_url

from app.context import build_context
from app.core import migrate
from app.core.clock import Clock
from app.core.db import engine_for
from app.core.settings import Environment, Settings, get_settings
from app.health.service import SchemaState, check_schema
from app.keys.service import ensure_signing_key


def run(args: argparse.Namespace, settings: Settings) -> str:
    _log.info("service.database", extra={"database": database_location(settings.database_url)})
    if args.command == "migrate":
        if asyncio.run(_migrate(settings)) is SchemaState.NEWER:
            return "database is at a newer schema that still serves this release: left as it is"
        return "database is at the latest schema"
    if args.command == "prune":
        return asyncio.run(_prune(settings))
    for variable, why in settings.production_warnings:
        _log.warning("settings.risky", extra={"setting": variable, "why": why})
    _refuse_sqlite_workers(args, settings)
    tls = tls_files(args, settings)
    if settings.environment is not Environment.production and not settings.jwt_issuer:
        # Discovery, JWKS and the tokens' iss then name where this server really listens
        # (`make run PORT=9000` kept advertising port 8000). Production requires JWT_ISSUER.
        os.environ["JWT_ISSUER"] = development_issuer(args.host, args.port, tls=tls is not None)
        get_settings.cache_clear()
        settings = get_settings()
    asyncio.run(_migrate(settings))
    if settings.environment is Environment.development:
        print(next_steps(args.host, args.port, tls), file=sys.stderr, flush=True)
    _serve(args, settings, tls)
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


def development_issuer(host: str, port: int, *, tls: bool = False) -> str:
    """Where a client on this machine reaches a server bound to `host`: a wildcard address is
    reached as localhost, an IPv6 literal in brackets."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding it
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"


@dataclass(frozen=True)
class TlsFiles:
    certfile: Path
    keyfile: Path
    dev: bool  # the self-signed development certificate


def tls_files(args: argparse.Namespace, settings: Settings) -> TlsFiles | None:
    """The certificate and key to serve HTTPS with, checked before anything starts: a bad pair
    is one `configuration error` line, not a traceback from inside uvicorn."""
    given = (args.ssl_certfile, args.ssl_keyfile)
    if args.dev_tls:
        if settings.environment is Environment.production:
            _config_error(
                "--dev-tls in production: a self-signed certificate no client should trust; "
                "give the real one with --ssl-certfile and --ssl-keyfile"
            )
        if any(given):
            _config_error("--dev-tls makes its own certificate: drop --ssl-certfile/--ssl-keyfile")
        from app.cli.tls import DEV_TLS_DIR, dev_certificate

        made = dev_certificate(Path(args.dev_tls_dir) if args.dev_tls_dir else DEV_TLS_DIR)
        tls = TlsFiles(made.certfile, made.keyfile, dev=True)
    elif any(given):
        if not all(given):
            _config_error("--ssl-certfile and --ssl-keyfile go together")
        tls = TlsFiles(Path(args.ssl_certfile), Path(args.ssl_keyfile), dev=False)
    else:
        return None
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            tls.certfile, tls.keyfile
        )
    except (OSError, ssl.SSLError) as exc:
        _config_error(f"--ssl-certfile/--ssl-keyfile: cannot serve TLS with them ({exc})")
    return tls


def _config_error(message: str) -> NoReturn:
    print(f"configuration error: {message}", file=sys.stderr)
    raise SystemExit(2)


def next_steps(host: str, port: int, tls: TlsFiles | None = None) -> str:
    base = f"{'https' if tls else 'http'}://{host}:{port}"
    lines = [
        f"\nauthsvc listens on {base}. Next:",
        "  1. create a user:  python -m app users create EMAIL  (--role admin for /admin)",
        f"  2. open {base}/docs, Authorize with that user, and try the routes",
    ]
    if tls and tls.dev:
        lines.append(
            f"  (self-signed certificate {tls.certfile}: browsers warn until you trust it; "
            "docs/engines.md)"
        )
    return "\n".join(lines) + "\n"


def _serve(args: argparse.Namespace, settings: Settings, tls: TlsFiles | None) -> None:
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
        ssl_certfile=str(tls.certfile) if tls else None,
        ssl_keyfile=str(tls.keyfile) if tls else None,
    )


async def _migrate(settings: Settings) -> SchemaState:
    """Bring the schema to this release's head, unless a newer release already migrated it
    past that and still serves this one (a rolling deploy, a rollback): then leave it."""
    migrate.ensure_sqlite_directory(settings.database_url)
    engine = engine_for(settings)
    try:
        async with engine.connect() as conn:
            schema = await check_schema(conn)
        if schema.state is SchemaState.INCOMPATIBLE:
            raise SystemExit(
                f"error: the database schema ({', '.join(sorted(schema.database))}) was "
                "migrated by a newer release that serves releases from revision "
                f"{schema.oldest_code_revision or '(not recorded)'} on; this release is at "
                f"{', '.join(sorted(schema.code))}. Deploy a newer release."
            )
        if schema.state is SchemaState.NEWER:
            _log.warning(
                "migrate.schema_newer",
                extra={
                    "database_revision": sorted(schema.database),
                    "code_revision": sorted(schema.code),
                },
            )
        elif schema.state is SchemaState.PENDING:
            direct = settings.direct_database_url
            await asyncio.to_thread(
                migrate.upgrade, direct or settings.database_url, transaction_pooled=direct is None
            )
        await ensure_signing_key(
            engine,
            algorithm=settings.jwt_algorithm.value,
            secret=settings.secret_key.get_secret_value(),
            now=Clock().now(),
        )
    finally:
        await engine.dispose()
    return schema.state


async def _prune(settings: Settings) -> str:
    ctx = await build_context(settings, Clock())
    try:
        sessions, tokens = await ctx.sessions.prune(settings.refresh_token_retention)
    finally:
        ctx.passwords.close()
        await ctx.engine.dispose()
    return f"deleted {sessions} sessions and {tokens} refresh tokens"
