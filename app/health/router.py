from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter

from app.core.dependencies import DatabaseDep, LimiterDep
from app.core.errors import ServiceUnavailableError, is_database_unavailable
from app.core.exposure import public
from app.health import repository

router = APIRouter(tags=["health"])
READINESS_TIMEOUT = 1.5  # seconds: /readyz answers within 2 s (docs/deploy.md)
logger = logging.getLogger("app.health")


@router.get("/healthz")
@public
async def healthz() -> dict[str, str]:
    """The process is up and serving. Never touches the database."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "database unreachable, or migrations pending"}},
)
@public
async def readyz(
    database: DatabaseDep,
    limiter: LimiterDep,
) -> dict[str, str]:
    """The database answers and its schema is at this code's migration head: this replica can
    take traffic. 503 `service_unavailable` (with Retry-After) otherwise, within the pool
    timeout. `redis` ("ok", "down", "not configured") is reported, not required: without
    Redis the rate limits fail open to per-process counting (docs/deploy.md, "Redis")."""
    expected = repository.expected_revisions()
    try:
        # A probe must answer before its own timeout (Kubernetes' default is 1 s, ours is
        # documented as 2 s) even when requests may take DB_POOL_TIMEOUT: a frozen database
        # is reported as such, not as a hung replica. Cancelling the check terminates the
        # connection it was using (SQLAlchemy discards a connection interrupted mid-call).
        async with asyncio.timeout(READINESS_TIMEOUT):
            async with database.engine.connect() as conn:
                current = await repository.database_revisions(conn)
    except Exception as exc:
        if is_database_unavailable(exc):  # TimeoutError included
            raise ServiceUnavailableError("The database is unreachable.") from exc
        raise
    if current != expected:
        logger.warning(
            "readiness.migrations_pending",
            extra={"database_revision": sorted(current), "code_revision": sorted(expected)},
        )
        raise ServiceUnavailableError("Database migrations are pending.")
    return {
        "status": "ready",
        "database": "ok",
        "migrations": "current",
        "redis": await limiter.redis_status(),
    }
