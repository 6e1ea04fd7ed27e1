from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from app.core.errors import ServiceUnavailableError, is_database_unavailable
from app.dependencies import ContextDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and serving."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "database unreachable"}})
async def readyz(ctx: ContextDep) -> dict[str, str]:
    """The database answers: this replica can take traffic."""
    try:
        async with ctx.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        if is_database_unavailable(exc):
            raise ServiceUnavailableError("The database is unreachable.") from exc
        raise
    return {"status": "ready", "database": "ok"}
