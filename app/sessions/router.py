"""Self-service device sessions: see where you are logged in, and end any of it."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.audit.service import record
from app.auth.dependencies import CurrentSession
from app.context import forget_sessions_after_commit
from app.dependencies import ClientDep, ContextDep, DbSession
from app.sessions import service
from app.sessions.repository import DeviceSession
from app.sessions.schemas import DeviceSessionOut

router = APIRouter(prefix="/auth/sessions", tags=["sessions"])


def device_out(device: DeviceSession, current: uuid.UUID | None) -> DeviceSessionOut:
    return DeviceSessionOut(
        id=device.id,
        device_name=device.device_name,
        user_agent=device.user_agent,
        ip=device.ip,
        created_at=device.created_at,
        last_active_at=device.last_seen_at,
        idle_expires_at=device.idle_expires_at,
        absolute_expires_at=device.absolute_expires_at,
        current=device.id == current,
    )


@router.get("")
async def list_sessions(
    auth: CurrentSession, ctx: ContextDep, uow: DbSession
) -> list[DeviceSessionOut]:
    """Your live sessions, newest first; `current` marks the one making this request."""
    conn = await uow.connection()
    devices = await service.list_devices(conn, auth.session.user_id, now=ctx.clock.now())
    return [device_out(d, auth.session.id) for d in devices]


@router.delete(
    "/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "`session_not_found`: not a live session of yours"}},
)
async def revoke_session(
    session_id: uuid.UUID, auth: CurrentSession, ctx: ContextDep, uow: DbSession, client: ClientDep
) -> Response:
    """End one of your sessions: its refresh token and access tokens stop working at once."""
    now = ctx.clock.now()
    conn = await uow.connection()
    await service.revoke_device(conn, auth.session.user_id, session_id, now=now)
    forget_sessions_after_commit(ctx, uow)
    await record(
        conn,
        "session.revoked",
        now=now,
        client=client,
        user_id=auth.session.user_id,
        session_id=session_id,
        by="user",
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
