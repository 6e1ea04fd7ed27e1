"""The sliding-session middleware: authenticates every request that carries an access token.

Pure ASGI: it keeps no per-request state on the instance, and hands the verified identity to
routes through `scope["state"]["auth"]`. A request counts as activity, and slides the session,
only once it has succeeded (2xx): a 404, a redirect or a refused request does not keep a
session alive, and neither do the passive routes (session-status).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth.errors import InvalidToken
from app.auth.tokens import AccessClaims
from app.context import AppContext
from app.core.errors import (
    DomainError,
    ServiceUnavailableError,
    domain_error_response,
    is_database_unavailable,
)
from app.core.middleware import route_path
from app.sessions.repository import SessionState
from app.sessions.service import load_for_request, touch

logger = logging.getLogger("app.sessions")
AUTH_STATE_KEY = "auth"


@dataclass(frozen=True, slots=True)
class Authenticated:
    claims: AccessClaims
    session: SessionState


class SlidingSessionMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        public_paths: frozenset[str],
        passive_paths: frozenset[str],
    ) -> None:
        self.app = app
        # Routes that never look at an access token (login, refresh, health, docs).
        self.public_paths = public_paths
        # Routes that authenticate but are not user activity, so they must not slide.
        self.passive_paths = passive_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        token = None if path in self.public_paths else bearer_token(scope)
        if token is None:
            await self.app(scope, receive, send)
            return
        ctx: AppContext = scope["app"].state.ctx
        try:
            auth = await self._authenticate(ctx, token)
        except DomainError as exc:
            await domain_error_response(exc)(scope, receive, send)
            return
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            logger.warning("db.unavailable", extra={"error_type": type(exc).__name__})
            await domain_error_response(ServiceUnavailableError())(scope, receive, send)
            return
        scope.setdefault("state", {})[AUTH_STATE_KEY] = auth
        if path in self.passive_paths:
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_and_watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, send_and_watch)
        if 200 <= status < 300:
            await self._slide(ctx, auth)

    @staticmethod
    async def _authenticate(ctx: AppContext, token: str) -> Authenticated:
        now = ctx.clock.now()
        claims = ctx.access_codec.verify(token, now=now)
        state = await load_for_request(
            ctx.engine, ctx.policy, ctx.session_cache, claims.session_id, now
        )
        if state.user_id != claims.user_id:
            raise InvalidToken()
        return Authenticated(claims=claims, session=state)

    @staticmethod
    async def _slide(ctx: AppContext, auth: Authenticated) -> None:
        # The response has been sent: a failure here can only be logged. The next request
        # will slide instead, well inside the idle timeout.
        try:
            if await touch(
                ctx.engine, ctx.policy, ctx.session_cache, auth.session, ctx.clock.now()
            ):
                logger.debug("session.slid", extra={"session_id": str(auth.session.id)})
        except Exception as exc:  # never raise once the response is out: log, and go on
            if is_database_unavailable(exc):
                logger.warning("session.slide_failed", extra={"error_type": type(exc).__name__})
            else:
                logger.exception("session.slide_failed")


def bearer_token(scope: Scope) -> str | None:
    for key, value in scope["headers"]:
        if key == b"authorization":
            header: str = value.decode("latin-1")
            scheme, _, credentials = header.partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
            return None
    return None
