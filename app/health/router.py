from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter

from app.core.dependencies import DatabaseDep, LimiterDep
from app.core.errors import ServiceUnavailableError, is_database_unavailable
from app.core.exposure import public
from app.health.service import SchemaState, check_schema

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
    responses={
        503: {
            "description": "database unreachable, migrations pending, or a schema this "
            "release no longer serves"
        }
    },
)
@public
async def readyz(
    database: DatabaseDep,
    limiter: LimiterDep,
) -> dict[str, str]:
    """The database answers and its schema serves this code: this replica can take traffic.
    `migrations` is "current" (at this release's head) or "newer" (a newer release migrated
    the database and, by the expand/contract rule, this one still works on it: a rolling
    deploy keeps the old replicas in). 503 `service_unavailable` (with Retry-After) while
    migrations are pending or a newer release contracted the schema past this one, and when
    the database does not answer within 1.5 s. `redis` ("ok", "down", "not configured") is
    reported, not required: without Redis the rate limits fail open to per-process counting
    (docs/deploy.md, "Redis")."""
    try:
        # A probe must answer before its own timeout (Kubernetes' default is 1 s, ours is
        # documented as 2 s) even when requests may take DB_POOL_TIMEOUT: a frozen database
        # is reported as such, not as a hung replica. Cancelling the check terminates the
        # connection it was using (SQLAlchemy discards a connection interrupted mid-call).
        async with asyncio.timeout(READINESS_TIMEOUT):
            async with database.engine.connect() as conn:
                schema = await check_schema(conn)
    except Exception as exc:
        if is_database_unavailable(exc):  # TimeoutError included
            raise ServiceUnavailableError("The database is unreachable.") from exc
        raise
    if not schema.state.serves:
        logger.warning(
            "readiness.schema_not_served",
            extra={
                "schema_state": schema.state.value,
                "database_revision": sorted(schema.database),
                "code_revision": sorted(schema.code),
                "oldest_code_revision": schema.oldest_code_revision,
            },
        )
        raise ServiceUnavailableError(_REFUSALS[schema.state])
    return {
        "status": "ready",
        "database": "ok",
        "migrations": schema.state.value,
        "redis": await limiter.redis_status(),
    }


_REFUSALS = {
    SchemaState.PENDING: "Database migrations are pending.",
    SchemaState.INCOMPATIBLE: (
        "The database schema was migrated by a newer release that no longer serves this one."
    ),
}
