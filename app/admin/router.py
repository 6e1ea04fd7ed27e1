"""Administration: a user's sessions, deactivation (revoking everything) and reactivation, and
the audit trail."""

from __future__ import annotations

import uuid
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.account.dependencies import AccountServiceDep
from app.account.service import Actor
from app.admin.dependencies import AdminSession
from app.audit import repository as audit_repository
from app.audit.schemas import AuditEventOut
from app.core.dependencies import ClientDep, DbSession
from app.core.text import PlainText
from app.sessions.dependencies import SessionServiceDep
from app.sessions.schemas import DeviceSessionOut
from app.users import service as users
from app.users.schemas import UserOut, UserPageOut

_FORBIDDEN: dict[int | str, dict[str, Any]] = {403: {"description": "`forbidden`: not an admin"}}
router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/users", responses=_FORBIDDEN)
async def find_users(
    admin: AdminSession,
    uow: DbSession,
    email: Annotated[
        PlainText | None,
        Query(max_length=320, description="Only addresses containing this text."),
    ] = None,
    after: Annotated[
        PlainText | None,
        Query(max_length=320, description="The `next_after` of the previous page."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> UserPageOut:
    """Find users by email (the admin routes take a user's id), a page at a time, by email."""
    page = await users.find_users(
        await uow.connection(), email_contains=email, after=after, limit=limit
    )
    return UserPageOut(
        users=[
            UserOut(id=u.id, email=u.email, role=u.role, is_active=u.is_active) for u in page.users
        ],
        next_after=page.next_after,
    )


@router.get(
    "/users/{user_id}/sessions",
    responses={**_FORBIDDEN, 404: {"description": "`user_not_found`"}},
)
async def user_sessions(
    user_id: uuid.UUID, admin: AdminSession, sessions: SessionServiceDep, uow: DbSession
) -> list[DeviceSessionOut]:
    await users.require_by_id(await uow.connection(), user_id)
    devices = await sessions.list_devices(uow, user_id)
    return [DeviceSessionOut.of(d, admin.session.id) for d in devices]


@router.post(
    "/users/{user_id}/deactivate",
    responses={
        **_FORBIDDEN,
        404: {"description": "`user_not_found`"},
        409: {"description": "`last_admin`: the last active admin stays active"},
    },
)
async def deactivate(
    user_id: uuid.UUID,
    admin: AdminSession,
    accounts: AccountServiceDep,
    uow: DbSession,
    client: ClientDep,
) -> UserOut:
    """Deactivate the account and revoke all its sessions at once. The last active admin
    cannot be deactivated (409 `last_admin`)."""
    actor = Actor(client, session_id=admin.session.id, admin_id=admin.session.user_id)
    user, _ = await accounts.set_active(uow, actor, user_id, active=False)
    return UserOut(id=user.id, email=user.email, role=user.role, is_active=False)


@router.post(
    "/users/{user_id}/activate",
    responses={**_FORBIDDEN, 404: {"description": "`user_not_found`"}},
)
async def activate(
    user_id: uuid.UUID,
    admin: AdminSession,
    accounts: AccountServiceDep,
    uow: DbSession,
    client: ClientDep,
) -> UserOut:
    actor = Actor(client, session_id=admin.session.id, admin_id=admin.session.user_id)
    user, _ = await accounts.set_active(uow, actor, user_id, active=True)
    return UserOut(id=user.id, email=user.email, role=user.role, is_active=True)


@router.get("/audit", responses=_FORBIDDEN)
async def audit(
    _admin: AdminSession,
    uow: DbSession,
    user_id: uuid.UUID | None = None,
    session_id: uuid.UUID | None = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditEventOut]:
    """Audit events, newest first, filtered by user, session and time."""
    rows = await audit_repository.query_events(
        await uow.connection(), user_id=user_id, session_id=session_id, since=since, limit=limit
    )
    return [AuditEventOut(**asdict(row)) for row in rows]
