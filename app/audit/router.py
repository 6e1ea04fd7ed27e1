"""What happened to a user or a session: the audit trail, for admins."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from app.admin.dependencies import AdminSession
from app.audit import repository
from app.audit.schemas import AuditEventOut
from app.dependencies import DbSession

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/audit", responses={403: {"description": "`forbidden`: not an admin"}})
async def audit(
    _admin: AdminSession,
    uow: DbSession,
    user_id: uuid.UUID | None = None,
    session_id: uuid.UUID | None = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEventOut]:
    """Audit events, newest first, filtered by user, session and time."""
    rows = await repository.query_events(
        await uow.connection(), user_id=user_id, session_id=session_id, since=since, limit=limit
    )
    return [AuditEventOut(**asdict(row)) for row in rows]
