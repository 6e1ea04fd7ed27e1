"""Account self-service: your password and your device sessions."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from app.account.dependencies import AccountServiceDep
from app.account.schemas import ChangePasswordRequest
from app.account.service import Actor, PasswordChangeRefused
from app.audit.service import record
from app.auth.dependencies import CurrentSession
from app.core.db import committed_unit
from app.core.dependencies import (
    ClientDep,
    ClockDep,
    DatabaseDep,
    DbSession,
    LimiterDep,
)
from app.core.error_handlers import domain_error_response
from app.core.errors import DomainError
from app.sessions.dependencies import SessionServiceDep
from app.sessions.errors import SessionRevoked
from app.sessions.schemas import DeviceSessionOut
from app.users.errors import WrongCurrentPassword

router = APIRouter(prefix="/auth", tags=["account"])
sessions_router = APIRouter(prefix="/auth/sessions", tags=["sessions"])


@router.post(
    "/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        401: {"description": "`session_revoked`: too many wrong current passwords ended it"},
        403: {"description": "`invalid_current_password`"},
        422: {"description": "`invalid_password`; `password_unchanged`: the current one again"},
        429: {
            "description": "`rate_limited`: RATE_LIMIT_PASSWORD_CHANGE per session, or the "
            "session's other password changes are still being checked (Retry-After)"
        },
    },
)
async def change_password(
    body: ChangePasswordRequest,
    auth: CurrentSession,
    accounts: AccountServiceDep,
    limiter: LimiterDep,
    database: DatabaseDep,
    uow: DbSession,
    client: ClientDep,
) -> Response:
    """Change your password; every other session is revoked (this one stays).

    A wrong current password counts toward the account's lockout like a failed login, and
    after PASSWORD_CHANGE_MAX_FAILURES of them this session is revoked."""
    # Before the hash: every attempt costs an argon2 run on the shared pool.
    await limiter.hit("password_change", str(auth.session.id))
    actor = Actor(client, session_id=auth.session.id)
    user_id = auth.session.user_id
    passwords = {"current_password": body.current_password, "new_password": body.new_password}
    await accounts.check_password_change(user_id, **passwords)
    async with committed_unit(database.engine) as claim:
        await accounts.reserve_password_check(claim, actor, user_id)
    refused = await accounts.change_password(uow, actor, user_id, **passwords)
    if refused is not None:
        # Returned, not raised: the failure's records commit with the unit of work.
        return domain_error_response(_password_refusal(refused))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _password_refusal(refused: PasswordChangeRefused) -> DomainError:
    if refused.session_ended:
        return SessionRevoked("Too many wrong current passwords: this session has been ended.")
    return WrongCurrentPassword()


@sessions_router.get("")
async def list_sessions(
    auth: CurrentSession, sessions: SessionServiceDep, uow: DbSession
) -> list[DeviceSessionOut]:
    """Your live sessions, newest first; `current` marks the one making this request."""
    devices = await sessions.list_devices(uow, auth.session.user_id)
    return [DeviceSessionOut.of(d, auth.session.id) for d in devices]


@sessions_router.delete(
    "/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: {"description": "`session_not_found`: not a live session of yours"}},
)
async def revoke_session(
    session_id: uuid.UUID,
    auth: CurrentSession,
    sessions: SessionServiceDep,
    clock: ClockDep,
    uow: DbSession,
    client: ClientDep,
) -> Response:
    """End one of your sessions: its refresh token and access tokens stop working at once."""
    now = clock.now()
    await sessions.revoke_own(uow, auth.session.user_id, session_id, now=now)
    await record(
        await uow.connection(),
        "session.revoked",
        now=now,
        client=client,
        user_id=auth.session.user_id,
        session_id=session_id,
        by="user",
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)
