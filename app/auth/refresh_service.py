"""Refresh-token rotation: its own unit of work, one database round trip on PostgreSQL.

Unlike the other auth operations it needs no request transaction: the rotation (see
sessions.rotation) commits by itself, so a refresh holds a pooled connection for one
statement and the route skips the per-request unit of work.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from app.audit.service import ClientInfo, announce
from app.auth.errors import CsrfFailed, RefreshTokenInvalid, RefreshTokenReused, SessionRevoked
from app.auth.service import TokenGrant, issue_grant
from app.context import AppContext
from app.core.db import autocommit_connection
from app.sessions import repository as sessions
from app.sessions import rotation
from app.sessions.repository import SessionState

logger = logging.getLogger("app.auth")


class RefreshService:
    def __init__(self, ctx: AppContext, client: ClientInfo) -> None:
        self._ctx = ctx
        self._client = client

    async def refresh(self, refresh_token: str, *, csrf_token: str | None = None) -> TokenGrant:
        """Rotate. `csrf_token` is given (possibly empty) when the token came from a cookie:
        it must then be the session's CSRF token, checked before anything changes.

        The rotation is one database round trip (see sessions.rotation); everything that can
        refuse the request without the database (CSRF, the per-session limit) runs first."""
        codec = self._ctx.refresh_codec
        session_id = codec.session_of(refresh_token) or await self._legacy_session_of(refresh_token)
        if session_id is None:
            raise RefreshTokenInvalid()
        if csrf_token is not None and not self._ctx.csrf_codec.matches(session_id, csrf_token):
            raise CsrfFailed()
        await self._ctx.limiter.check("refresh_session", str(session_id))
        settings = self._ctx.settings
        now = self._ctx.clock.now()
        successor = codec.successor(refresh_token, session_id)
        result = await rotation.rotate(
            self._ctx.engine,
            rotation.RotationRequest(
                session_id=session_id,
                token_hash=codec.hash(refresh_token),
                successor_id=uuid.uuid4(),
                successor_hash=codec.hash(successor),
                now=now,
                policy=self._ctx.policy,
                reuse_interval=timedelta(seconds=settings.refresh_reuse_interval),
                ip=self._client.ip,
                user_agent=self._client.stored_user_agent,
            ),
        )
        return await self._after_rotation(result, successor, now)

    async def _after_rotation(
        self, result: rotation.Rotation, successor: str, now: datetime
    ) -> TokenGrant:
        state = result.session
        if result.outcome == "invalid" or state is None:
            raise RefreshTokenInvalid()
        if result.outcome == "unusable":
            self._ctx.policy.ensure_usable(state, now)
            raise SessionRevoked()  # pragma: no cover - ensure_usable raised already
        if result.outcome == "reused":
            self._ctx.session_cache.clear()  # the revocation is committed already
            self._announce(
                "refresh.reuse_detected",
                state,
                reuse_class=result.reuse_class,
                generation=result.generation,
            )
            raise RefreshTokenReused()
        await self._count_for_limit(state.id)
        if result.outcome == "rotated":
            self._announce("refresh.rotated", state, generation=result.generation)
        else:
            self._announce("refresh.retried", state, reuse_class=result.reuse_class)
        return issue_grant(self._ctx, state, successor, now)

    async def _count_for_limit(self, session_id: uuid.UUID) -> None:
        # The rotation is committed: a limiter outage (Redis) must not turn it into an error.
        try:
            await self._ctx.limiter.count("refresh_session", str(session_id))
        except Exception as exc:
            logger.warning("ratelimit.count_failed", extra={"error_type": type(exc).__name__})

    async def _legacy_session_of(self, refresh_token: str) -> uuid.UUID | None:
        """The session of a token issued before tokens named their session: one extra read."""
        async with autocommit_connection(self._ctx.engine) as conn:
            return await sessions.session_of_token(
                conn, self._ctx.refresh_codec.hash(refresh_token)
            )

    def _announce(self, event: str, state: SessionState, **details: object) -> None:
        announce(event, client=self._client, user_id=state.user_id, session_id=state.id, **details)
