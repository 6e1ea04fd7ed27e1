"""Purging dead sessions and old refresh tokens, on demand (CLI) and periodically."""

from __future__ import annotations

import logging
from datetime import timedelta

from app.context import AppContext
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
