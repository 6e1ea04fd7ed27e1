"""The identity middleware: turns a request's access token into an identity, and slides the
session once the request succeeded.

Pure ASGI: it keeps no per-request state on the instance, and hands the verified identity to
routes through `scope["state"]["auth"]`. A request counts as activity, and slides the session,
only once it has succeeded (2xx): a 404, a redirect or a refused request does not keep a
session alive, and neither do passive routes (see app.core.exposure).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth.errors import ClientDisabled, InvalidToken
from app.auth.tokens import AccessClaims, AccessTokenCodec, ServiceClaims
from app.clients.service import ServiceClients
from app.core.clock import Clock
from app.core.components import Components, components_of
from app.core.error_handlers import domain_error_response
from app.core.errors import DomainError, ServiceUnavailableError, is_database_unavailable
from app.core.exposure import ExposureMap
from app.core.metrics import ROUTE_LABEL
from app.core.middleware import route_path
from app.core.ratelimit import RateLimited, RateLimiter
from app.sessions.policy import SessionState
from app.sessions.service import SessionService

# The name its events have always had (log pipelines filter on it).
logger = logging.getLogger("app.sessions")
AUTH_STATE_KEY = "auth"


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A user's token, with its live session."""

    claims: AccessClaims
    session: SessionState


@dataclass(frozen=True, slots=True)
class ServiceCaller:
    """A service client's token (client_credentials): no user, no session. Routes that need a
    user refuse it (403 user_token_required); only routes that say so accept it."""

    claims: ServiceClaims


class IdentityMiddleware:
    def __init__(self, app: ASGIApp, *, exposure: ExposureMap) -> None:
        self.app = app
        self.exposure = exposure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path in self.exposure.limits and not await _within_limit(
            self.exposure.limits[path], scope, receive, send
        ):
            self._label(scope, path)
            return
        token = None if path in self.exposure.public_paths else bearer_token(scope)
        if token is None:
            await self.app(scope, receive, send)
            return
        components = components_of(scope["app"])
        sessions, clock = components.get(SessionService), components.get(Clock)
        try:
            auth = await _authenticate(components, sessions, clock, token)
        except DomainError as exc:
            self._label(scope, path)
            await domain_error_response(exc)(scope, receive, send)
            return
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            logger.warning("db.unavailable", extra={"error_type": type(exc).__name__})
            self._label(scope, path)
            await domain_error_response(ServiceUnavailableError())(scope, receive, send)
            return
        scope.setdefault("state", {})[AUTH_STATE_KEY] = auth
        # A service has no session to slide.
        if isinstance(auth, ServiceCaller) or path in self.exposure.passive_paths:
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
            await _slide(sessions, clock, auth)

    def _label(self, scope: Scope, path: str) -> None:
        """An answer given before routing is counted under its route, not as "unmatched"."""
        if path in self.exposure.static_paths:
            scope[ROUTE_LABEL] = path


async def _within_limit(limit: str, scope: Scope, receive: Receive, send: Send) -> bool:
    """Count this request against the route's limit; False once it answered 429 instead."""
    client = scope.get("client")
    limiter = components_of(scope["app"]).get(RateLimiter)
    try:
        await limiter.hit(limit, client[0] if client else "unknown")
    except RateLimited as exc:
        await domain_error_response(exc)(scope, receive, send)
        return False
    return True


async def _authenticate(
    components: Components, sessions: SessionService, clock: Clock, token: str
) -> Authenticated | ServiceCaller:
    """A user's token and its live session, or a service client's token and its enabled
    client: a token without `sid` is never taken for a session."""
    now = clock.now()
    claims = components.get(AccessTokenCodec).verify(token, now=now)
    if isinstance(claims, ServiceClaims):
        return await _service_caller(components.get(ServiceClients), claims)
    state = await sessions.authenticate(claims.session_id, now)
    if state.user_id != claims.user_id:
        raise InvalidToken()
    return Authenticated(claims=claims, session=state)


async def _service_caller(clients: ServiceClients, claims: ServiceClaims) -> ServiceCaller:
    """Read on every request (one indexed row): a disabled client's tokens stop at once."""
    if not await clients.is_active(claims.client_id):
        raise ClientDisabled()
    return ServiceCaller(claims)


async def _slide(sessions: SessionService, clock: Clock, auth: Authenticated) -> None:
    # The response has been sent: a failure here can only be logged. The next request will
    # slide instead, well inside the idle timeout.
    try:
        if await sessions.touch(auth.session, clock.now()):
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
