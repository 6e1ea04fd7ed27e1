"""Purging dead sessions and old refresh tokens, on demand (CLI) and periodically."""

from __future__ import annotations

import asyncio
import logging
import random
from datetime import timedelta

from app.context import AppContext
from app.core.errors import is_database_unavailable
from app.sessions import repository

logger = logging.getLogger("app.sessions.prune")


async def prune_once(ctx: AppContext) -> tuple[int, int]:
    now = ctx.clock.now()
    retention = ctx.settings.refresh_token_retention
    used_before = None if retention is None else now - timedelta(seconds=retention)
    async with ctx.engine.begin() as conn:
        sessions, tokens = await repository.prune(conn, now=now, used_before=used_before)
    logger.info("prune.completed", extra={"sessions_deleted": sessions, "tokens_deleted": tokens})
    return sessions, tokens


async def periodic_prune(ctx: AppContext) -> None:
    interval = ctx.settings.prune_interval
    while True:
        # Jitter keeps several workers from pruning in lock-step.
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))  # noqa: S311 - not security
        try:
            await prune_once(ctx)
        except Exception as exc:
            if not is_database_unavailable(exc):
                logger.exception("prune.failed")
            else:
                logger.warning("prune.skipped_db_unavailable")
