"""keys rotate | list."""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta

from app.core.clock import Clock
from app.core.db import create_engine
from app.core.settings import Settings
from app.keys import service as keys


def run(args: argparse.Namespace, settings: Settings) -> str:
    return asyncio.run(_run_keys(args, settings))


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
