"""Background jobs that run every N seconds in each process, surviving database outages."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from app.core.errors import is_database_unavailable

logger = logging.getLogger("app.periodic")


async def every(seconds: float, job: Callable[[], Awaitable[object]], *, name: str) -> None:
    """Run `job` every `seconds` (with jitter, so several workers do not run in lock-step)
    until cancelled. A database outage skips a run; the next one retries."""
    while True:
        await asyncio.sleep(seconds * random.uniform(0.8, 1.2))  # noqa: S311 - not security
        try:
            await job()
        except Exception as exc:
            if is_database_unavailable(exc):
                logger.warning("periodic.skipped_db_unavailable", extra={"job": name})
            else:
                logger.exception("periodic.failed", extra={"job": name})
