"""Prometheus scrape endpoint."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from app.core.dependencies import DatabaseDep, SettingsDep
from app.core.errors import UnauthorizedError
from app.core.exposure import public
from app.core.metrics import ACTIVE_SESSIONS, render, sample
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
    """Prometheus text format. With METRICS_TOKEN set, requires `Authorization: Bearer <it>`
    (production serves this route only then: app.main)."""
    expected = settings.metrics_token
    if expected is not None and not _presents(request, expected.get_secret_value()):
        raise UnauthorizedError()
    sample(database.engine.pool)
    ACTIVE_SESSIONS.set(await sessions.count_live())
    body, content_type = render()
    return Response(body, media_type=content_type)


def _presents(request: Request, token: str) -> bool:
    """Whether the request's Authorization header is `Bearer <token>` (the scheme in any case,
    RFC 7235). Compared in constant time: a timing difference must not spell the token out."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    matches = hmac.compare_digest(credentials.strip().encode(), token.encode())
    return scheme.lower() == "bearer" and matches
