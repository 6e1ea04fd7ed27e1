"""users create | deactivate | activate | set-password | verify | reset-mfa: the operator's
account commands."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from app.account.service import AccountService, Actor, build_account_service
from app.context import build_factors, build_mail
from app.core.client import ClientInfo
from app.core.clock import Clock
from app.core.db import UnitOfWork, engine_for
from app.core.ratelimit import RateLimiter
from app.core.security import PasswordHasher
from app.core.settings import Settings
from app.sessions.cache import SessionStateCache
from app.sessions.factory import build_session_service
from app.sessions.store import open_store
from app.users import service as users

T = TypeVar("T")
# The operator's CLI has never written audit rows (its shell history is its trail).
_CLI = Actor(ClientInfo(), audited=False)


def run(args: argparse.Namespace, settings: Settings) -> str:
    return _run_users(args, settings)


def _read_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Repeat password: "):
        raise SystemExit("error: passwords do not match")
    return first


async def _in_unit_of_work(
    settings: Settings, work: Callable[[AccountService, UnitOfWork], Awaitable[T]]
) -> T:
    """One committed unit of work with the account service, as a request would have it."""
    engine = engine_for(settings)
    passwords = PasswordHasher(settings.password_hash_threads, settings.password_hash_profile)
    try:
        accounts = _accounts(settings, engine, passwords)
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


def _accounts(settings: Settings, engine: AsyncEngine, passwords: PasswordHasher) -> AccountService:
    """Just what an account command needs: no signing keys, no shared rate limits, and no
    cache of session rows worth keeping."""
    clock = Clock()
    sessions = build_session_service(
        settings,
        open_store(engine),
        cache=SessionStateCache(0),
        limiter=RateLimiter(settings.rate_limits, redis_url=None, enabled=False),
        clock=clock,
    )
    return build_account_service(settings, passwords=passwords, sessions=sessions, clock=clock)


def _run_users(args: argparse.Namespace, settings: Settings) -> str:
    if args.action == "list":
        return _list_users(settings, email=args.email, limit=args.limit)
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
    if args.action == "verify":
        return asyncio.run(_in_unit_of_work(settings, lambda _, uow: _verify(uow, args.email)))
    if args.action == "reset-mfa":
        return asyncio.run(
            _in_unit_of_work(settings, lambda _, uow: _reset_mfa(uow, settings, args.email))
        )
    active = args.action == "activate"

    async def set_active(accounts: AccountService, uow: UnitOfWork) -> tuple[int, bool]:
        conn = await uow.connection()
        user = await users.require_by_email(conn, args.email)
        # Unlike the admin API, the operator may deactivate the last admin (to shut the admin
        # API in an incident, say): the same shell can make an admin again. It is warned.
        _, revoked = await accounts.set_active(
            uow, _CLI, user.id, active=active, allow_no_admin=True
        )
        return revoked, await users.has_active_admin(conn)

    revoked, admin_remains = asyncio.run(_in_unit_of_work(settings, set_active))
    if not admin_remains:
        print(_NO_ADMIN_WARNING, file=sys.stderr)
    return f"user {args.action}d; {revoked} sessions revoked"


async def _reset_mfa(uow: UnitOfWork, settings: Settings, email: str) -> str:
    conn = await uow.connection()
    user = await users.require_by_email(conn, email)
    factors = build_factors(settings, build_mail(settings)[0])
    if await factors.reset(conn, user.id, Clock().now()):
        return f"second factors of {user.email} removed; its logins take the password alone"
    return f"{user.email} had no second factor"


async def _verify(uow: UnitOfWork, email: str) -> str:
    conn = await uow.connection()
    user = await users.require_by_email(conn, email)
    if user.email_verified_at is not None:
        return f"{user.email} was verified already ({user.email_verified_at.isoformat()})"
    await users.mark_email_verified(conn, user.id, now=Clock().now())
    return f"{user.email} is verified"


def _list_users(settings: Settings, *, email: str | None, limit: int) -> str:
    async def page(_: AccountService, uow: UnitOfWork) -> users.UserPage:
        conn = await uow.connection()
        return await users.find_users(conn, email_contains=email, after=None, limit=limit)

    found = asyncio.run(_in_unit_of_work(settings, page))
    lines = [
        f"{u.id}  {u.email}  {u.role}  {'active' if u.is_active else 'inactive'}"
        for u in found.users
    ]
    if found.next_after is not None:
        lines.append(f"(more: raise --limit above {limit})")
    return "\n".join(lines) if lines else "no users"


_NO_ADMIN_WARNING = (
    "warning: no active admin remains; the admin API is unusable until `users activate EMAIL` "
    "(an admin) or `users create EMAIL --role admin`"
)
