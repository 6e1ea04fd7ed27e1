"""`python -m app ...`: serve, migrate, prune, and user administration."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.account.service import AccountService, Actor
from app.audit import repository as audit_repository
from app.context import AppContext, build_accounts, build_context
from app.core import migrate
from app.core.client import ClientInfo
from app.core.clock import Clock
from app.core.db import UnitOfWork, create_engine
from app.core.errors import DomainError
from app.core.logging import configure_logging
from app.core.security import PasswordHasher
from app.core.settings import Settings, get_settings
from app.keys import service as keys
from app.keys.service import ensure_signing_key
from app.users import service as users

T = TypeVar("T")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="migrate, then run the HTTP server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)

    sub.add_parser("migrate", help="apply database migrations and create a signing key")
    sub.add_parser("prune", help="delete expired/revoked sessions and old refresh tokens")

    keys_cmd = sub.add_parser("keys", help="signing keys").add_subparsers(
        dest="action", required=True
    )
    rotate_cmd = keys_cmd.add_parser(
        "rotate", help="publish a new key now; it signs after KEY_PUBLISH_DELAY"
    )
    rotate_cmd.add_argument(
        "--now", action="store_true", help="sign with it at once (emergency: a key leaked)"
    )
    keys_cmd.add_parser("list", help="keys with their state and dates")

    audit_cmd = sub.add_parser("audit", help="a user's audit trail, newest first")
    audit_cmd.add_argument("user", help="email or user id")
    audit_cmd.add_argument("--limit", type=int, default=50)

    user_cmd = sub.add_parser("users", help="manage users").add_subparsers(
        dest="action", required=True
    )
    create = user_cmd.add_parser("create", help="create a user (password from stdin or prompt)")
    create.add_argument("email")
    create.add_argument("--role", default="user")
    for action, text in (
        ("deactivate", "deactivate a user and revoke all their sessions"),
        ("activate", "re-activate a user"),
        ("set-password", "set a new password (stdin or prompt) and revoke all sessions"),
    ):
        user_cmd.add_parser(action, help=text).add_argument("email")
    return parser


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise SystemExit("error: passwords do not match")
    return first


async def _in_transaction(settings: Settings, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    engine = create_engine(settings.database_url)
    try:
        async with engine.begin() as conn:
            return await work(conn)
    finally:
        await engine.dispose()


async def _with_context(settings: Settings, work: Callable[[AppContext], Awaitable[T]]) -> T:
    ctx = await build_context(settings, Clock())
    try:
        return await work(ctx)
    finally:
        ctx.passwords.close()
        await ctx.engine.dispose()


async def _in_unit_of_work(
    settings: Settings, work: Callable[[AccountService, UnitOfWork], Awaitable[T]]
) -> T:
    """One committed unit of work with the account service, as a request would have it."""
    engine = create_engine(settings.database_url)
    passwords = PasswordHasher(settings.password_hash_threads, settings.password_hash_profile)
    try:
        accounts = build_accounts(settings, engine, Clock(), passwords)
        uow = UnitOfWork(engine)
        try:
            result = await work(accounts, uow)
        except BaseException:
            await uow.finish(commit=False)
            raise
        await uow.finish(commit=True)
        return result
    finally:
        passwords.close()
        await engine.dispose()


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
    async def prune(ctx: AppContext) -> tuple[int, int]:
        return await ctx.sessions.prune(settings.refresh_token_retention)

    sessions, tokens = await _with_context(settings, prune)
    return f"deleted {sessions} sessions and {tokens} refresh tokens"


async def _run_keys(args: argparse.Namespace, settings: Settings) -> str:
    if settings.jwt_private_key_file is not None:
        raise SystemExit(
            "error: keys come from JWT_PRIVATE_KEY_FILE; rotate by replacing the files "
            "(keep the old public key in JWT_PUBLIC_KEY_FILES until its tokens expire)"
        )
    engine = create_engine(settings.database_url)
    now, lifetime = Clock().now(), settings.token_lifetime
    try:
        if args.action == "rotate":
            delay = timedelta(0) if args.now else timedelta(seconds=settings.publish_delay)
            key = await keys.rotate(
                engine,
                algorithm=settings.jwt_algorithm.value,
                secret=settings.secret_key.get_secret_value(),
                now=now,
                publish_delay=delay,
                token_lifetime=lifetime,
            )
            return f"published key {key.kid}; it signs from {key.activates_at.isoformat()}"
        lines = [f"{'kid':<24} {'alg':<6} {'state':<9} {'created':<26} {'activates':<26} retires"]
        for status in await keys.list_keys(engine, now=now, token_lifetime=lifetime):
            key = status.key
            dates = [key.created_at, key.activates_at, status.retires_at]
            created, activates, retires = (
                d.isoformat(timespec="seconds") if d else "-" for d in dates
            )
            lines.append(
                f"{key.kid:<24} {key.algorithm:<6} {status.state:<9} "
                f"{created:<26} {activates:<26} {retires}"
            )
        return "\n".join(lines)
    finally:
        await engine.dispose()


async def _run_audit(args: argparse.Namespace, settings: Settings) -> str:
    async def work(conn: AsyncConnection) -> str:
        try:
            user = await users.require_by_id(conn, uuid.UUID(args.user))
        except ValueError:
            user = await users.require_by_email(conn, args.user)
        rows = await audit_repository.query_events(conn, user_id=user.id, limit=args.limit)
        lines = [f"audit trail of {user.email} ({user.id}), newest first"]
        for row in rows:
            details = " ".join(f"{k}={v}" for k, v in row.details.items())
            lines.append(
                f"{row.created_at.isoformat(timespec='seconds')}  {row.event:<24} "
                f"session={row.session_id or '-'} ip={row.ip or '-'} {details}".rstrip()
            )
        return "\n".join(lines)

    return await _in_transaction(settings, work)


_CLI = Actor(ClientInfo(), audited=False)


def _run_users(args: argparse.Namespace, settings: Settings) -> str:
    if args.action == "create":
        password = _read_password()
        user_id = asyncio.run(
            _in_unit_of_work(
                settings,
                lambda accounts, uow: accounts.create_user(
                    uow, email=args.email, password=password, role=args.role
                ),
            )
        )
        return f"created user {user_id} ({users.normalize_email(args.email)}, role {args.role})"
    if args.action == "set-password":
        password = _read_password()
        revoked = asyncio.run(
            _in_unit_of_work(
                settings,
                lambda accounts, uow: accounts.set_password(uow, _CLI, args.email, password),
            )
        )
        return f"password changed; {revoked} sessions revoked"
    active = args.action == "activate"

    async def set_active(accounts: AccountService, uow: UnitOfWork) -> int:
        user = await users.require_by_email(await uow.connection(), args.email)
        _, revoked = await accounts.set_active(uow, _CLI, user.id, active=active)
        return revoked

    revoked = asyncio.run(_in_unit_of_work(settings, set_active))
    return f"user {args.action}d; {revoked} sessions revoked"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]).upper() or "settings"
            print(f"configuration error: {field}: {error['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, json_output=settings.json_logs)
    try:
        if args.command == "serve":
            asyncio.run(_migrate(settings))
            if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
                # Before the workers import prometheus_client: they share samples through it.
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="authsvc-metrics-")
            # The workers size their password-hashing pools by it (cores per worker).
            os.environ.setdefault("WEB_CONCURRENCY", str(args.workers))
            import uvicorn

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
            )
        elif args.command == "migrate":
            asyncio.run(_migrate(settings))
            print("database is at the latest schema")
        elif args.command == "prune":
            print(asyncio.run(_prune(settings)))
        elif args.command == "keys":
            print(asyncio.run(_run_keys(args, settings)))
        elif args.command == "audit":
            print(asyncio.run(_run_audit(args, settings)))
        else:
            print(_run_users(args, settings))
    except DomainError as exc:
        print(f"error: {exc.detail} ({exc.code})", file=sys.stderr)
        return 1
    return 0
