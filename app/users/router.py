"""Account self-service: change your password, and (when enabled) register."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.audit.service import record
from app.auth.dependencies import CurrentSession
from app.context import forget_sessions_after_commit
from app.dependencies import ClientDep, ContextDep, DbSession
from app.users import service
from app.users.errors import RegistrationClosed, WrongCurrentPassword
from app.users.schemas import ChangePasswordRequest, RegisterRequest, UserOut

router = APIRouter(prefix="/auth", tags=["account"])


@router.post(
    "/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={403: {"description": "`invalid_current_password`"}},
)
async def change_password(
    body: ChangePasswordRequest,
    auth: CurrentSession,
    ctx: ContextDep,
    uow: DbSession,
    client: ClientDep,
) -> Response:
    """Change your password; every other session is revoked (this one stays)."""
    user = await service.require_by_id(await uow.connection(), auth.session.user_id)
    valid, _ = await ctx.passwords.verify_and_update(body.current_password, user.password_hash)
    if not valid:
        raise WrongCurrentPassword()
    new_hash = await service.hash_new_password(ctx.passwords, body.new_password)
    now = ctx.clock.now()
    conn = await uow.connection()
    revoked = await service.replace_password_hash(
        conn, user.id, new_hash, now=now, keep_session=auth.session.id
    )
    forget_sessions_after_commit(ctx, uow)
    await record(
        conn,
        "password.changed",
        now=now,
        client=client,
        user_id=user.id,
        session_id=auth.session.id,
        sessions_revoked=revoked,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses={
        403: {"description": "`registration_closed`"},
        409: {"description": "`email_taken`"},
    },
)
async def register(
    body: RegisterRequest, ctx: ContextDep, uow: DbSession, client: ClientDep
) -> UserOut:
    """Create an account (only when ALLOW_REGISTRATION=true)."""
    if not ctx.settings.allow_registration:
        raise RegistrationClosed()
    await ctx.limiter.hit("login_ip", client.ip or "unknown")
    email = service.check_email(body.email)
    password_hash = await service.hash_new_password(ctx.passwords, body.password)
    now = ctx.clock.now()
    conn = await uow.connection()
    user_id = await service.insert_new_user(conn, email=email, password_hash=password_hash, now=now)
    await record(conn, "user.registered", now=now, client=client, user_id=user_id)
    return UserOut(id=user_id, email=email, role="user", is_active=True)
