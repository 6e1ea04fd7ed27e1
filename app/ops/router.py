"""Prometheus scrape endpoint."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from app.core.db import autocommit_connection
from app.core.errors import UnauthorizedError
from app.core.metrics import ACTIVE_SESSIONS, record_pool, render
from app.dependencies import ContextDep
from app.sessions import repository as sessions

router = APIRouter(tags=["ops"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, ctx: ContextDep) -> Response:
    """Prometheus text format. With METRICS_TOKEN set, requires `Authorization: Bearer <it>`."""
    expected = ctx.settings.metrics_token
    if expected is not None:
        presented = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(presented.encode(), expected.get_secret_value().encode()):
            raise UnauthorizedError()
    record_pool(ctx.engine.pool)
    async with autocommit_connection(ctx.engine) as conn:
        ACTIVE_SESSIONS.set(await sessions.count_live_sessions(conn, now=ctx.clock.now()))
    body, content_type = render()
    return Response(body, media_type=content_type)
