"""Administration: inspect a user's sessions, deactivate (revoking everything) or reactivate."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from app.admin.dependencies import AdminSession
from app.audit.service import record
from app.context import forget_sessions_after_commit
from app.dependencies import ClientDep, ContextDep, DbSession
from app.sessions import service as sessions
from app.sessions.router import device_out
from app.sessions.schemas import DeviceSessionOut
from app.users import service as users
from app.users.schemas import UserOut

router = APIRouter(
    prefix="/admin/users",
    tags=["admin"],
    responses={
        403: {"description": "`forbidden`: not an admin"},
        404: {"description": "`user_not_found`"},
    },
)


@router.get("/{user_id}/sessions")
async def user_sessions(
    user_id: uuid.UUID, admin: AdminSession, ctx: ContextDep, uow: DbSession
) -> list[DeviceSessionOut]:
    conn = await uow.connection()
    await users.require_by_id(conn, user_id)
    devices = await sessions.list_devices(conn, user_id, now=ctx.clock.now())
    return [device_out(d, admin.session.id) for d in devices]


async def _set_active(
    user_id: uuid.UUID,
    active: bool,
    admin: AdminSession,
    ctx: ContextDep,
    uow: DbSession,
    client: ClientDep,
) -> UserOut:
    now = ctx.clock.now()
    conn = await uow.connection()
    user = await users.require_by_id(conn, user_id)
    revoked = await users.set_active_by_id(conn, user_id, active=active, now=now)
    forget_sessions_after_commit(ctx, uow)
    await record(
        conn,
        "user.activated" if active else "user.deactivated",
        now=now,
        client=client,
        user_id=user_id,
        session_id=admin.session.id,
        by=str(admin.session.user_id),
        sessions_revoked=revoked,
    )
    return UserOut(id=user.id, email=user.email, role=user.role, is_active=active)


@router.post("/{user_id}/deactivate")
async def deactivate(
    user_id: uuid.UUID, admin: AdminSession, ctx: ContextDep, uow: DbSession, client: ClientDep
) -> UserOut:
    """Deactivate the account and revoke all its sessions at once."""
    return await _set_active(user_id, False, admin, ctx, uow, client)


@router.post("/{user_id}/activate")
async def activate(
    user_id: uuid.UUID, admin: AdminSession, ctx: ContextDep, uow: DbSession, client: ClientDep
) -> UserOut:
    return await _set_active(user_id, True, admin, ctx, uow, client)
