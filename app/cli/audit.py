"""audit USER: a user's audit trail, newest first."""

from __future__ import annotations

import argparse
import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncConnection

from app.audit import repository as audit_repository
from app.core.db import engine_for
from app.core.settings import Settings
from app.users import service as users


def run(args: argparse.Namespace, settings: Settings) -> str:
    return asyncio.run(_run_audit(args, settings))


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

    engine = engine_for(settings)
    try:
        async with engine.begin() as conn:
            return await work(conn)
    finally:
        await engine.dispose()
