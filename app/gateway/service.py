"""Token introspection (RFC 7662): is this token usable right now, and whose is it?"""

from __future__ import annotations

import hmac
import uuid
from datetime import datetime
from typing import Literal

from app.context import AppContext
from app.core.db import autocommit_connection
from app.core.errors import DomainError
from app.gateway.errors import IntrospectionClientUnauthorized
from app.gateway.schemas import IntrospectionResponse
from app.sessions import repository as sessions
from app.sessions.service import load_usable

INACTIVE = IntrospectionResponse(active=False)


def authenticate_client(ctx: AppContext, client_id: str, secret: str) -> str:
    """Constant-time check of a gateway's Basic credentials against INTROSPECTION_CLIENTS."""
    expected = ctx.settings.introspection_clients.get(client_id)
    # Compare against something even for an unknown id, so timing does not reveal ids.
    reference = expected.get_secret_value() if expected else "\x00" * 32
    if not hmac.compare_digest(reference.encode(), secret.encode()) or expected is None:
        raise IntrospectionClientUnauthorized()
    return client_id


async def introspect(ctx: AppContext, token: str, hint: str | None) -> IntrospectionResponse:
    """Never slides a session: a gateway asking is not the user being active."""
    order = (_refresh, _access) if hint == "refresh_token" else (_access, _refresh)
    for attempt in order:
        result = await attempt(ctx, token)
        if result is not None:
            return result
    return INACTIVE


async def _access(ctx: AppContext, token: str) -> IntrospectionResponse | None:
    now = ctx.clock.now()
    try:
        claims = ctx.access_codec.verify(token, now=now)
        async with autocommit_connection(ctx.engine) as conn:
            state = await load_usable(conn, ctx.policy, claims.session_id, now)
    except DomainError:
        return None
    if state.user_id != claims.user_id:
        return None
    return _active(
        ctx,
        "access_token",
        user_id=claims.user_id,
        session_id=claims.session_id,
        role=state.role,  # the account's role now, not the one the token was issued with
        issued_at=claims.issued_at,
        expires_at=claims.expires_at,
    )


async def _refresh(ctx: AppContext, token: str) -> IntrospectionResponse | None:
    if len(token) > 512:
        return None
    now = ctx.clock.now()
    async with autocommit_connection(ctx.engine) as conn:
        link = await sessions.find_token_link(conn, ctx.refresh_codec.hash(token))
    if link is None or link.used_at is not None:
        return None
    try:
        state = ctx.policy.ensure_usable(link.session, now)
    except DomainError:
        return None
    return _active(
        ctx,
        "refresh_token",
        user_id=state.user_id,
        session_id=state.id,
        role=state.role,
        issued_at=state.created_at,
        expires_at=min(state.idle_expires_at, state.absolute_expires_at),
    )


def _active(
    ctx: AppContext,
    token_type: Literal["access_token", "refresh_token"],
    *,
    user_id: uuid.UUID,
    session_id: uuid.UUID,
    role: str,
    issued_at: datetime,
    expires_at: datetime,
) -> IntrospectionResponse:
    return IntrospectionResponse(
        active=True,
        token_type=token_type,
        sub=str(user_id),
        sid=str(session_id),
        role=role,
        scope=role,
        iss=ctx.settings.issuer,
        aud=ctx.settings.jwt_audience,
        iat=int(issued_at.timestamp()),
        exp=int(expires_at.timestamp()),
    )
