"""Prometheus scrape endpoint."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from app.core.dependencies import DatabaseDep, SettingsDep
from app.core.errors import UnauthorizedError
from app.core.exposure import public
from app.core.metrics import ACTIVE_SESSIONS, record_pool, render
from app.sessions.dependencies import SessionServiceDep

router = APIRouter(tags=["ops"])


@router.get("/metrics", include_in_schema=False)
@public
async def metrics(
    request: Request,
    settings: SettingsDep,
    database: DatabaseDep,
    sessions: SessionServiceDep,
) -> Response:
    """Prometheus text format. With METRICS_TOKEN set, requires `Authorization: Bearer <it>`."""
    expected = settings.metrics_token
    if expected is not None:
        presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), expected.get_secret_value().encode()):
            raise UnauthorizedError()
    record_pool(database.engine.pool)
    ACTIVE_SESSIONS.set(await sessions.count_live())
    body, content_type = render()
    return Response(body, media_type=content_type)
