"""Token introspection (RFC 7662): is this token usable right now, and whose is it?"""

from __future__ import annotations

import hmac
import uuid
from datetime import datetime
from typing import Literal

from pydantic import SecretStr

from app.audit.service import record
from app.auth.tokens import AccessTokenCodec, ServiceClaims
from app.clients.service import ServiceClients
from app.core.client import ClientInfo
from app.core.clock import Clock
from app.core.db import UnitOfWork
from app.core.errors import DomainError
from app.core.ratelimit import RateLimiter
from app.gateway.schemas import IntrospectionResponse
from app.sessions.service import SessionService

INACTIVE = IntrospectionResponse(active=False)


class IntrospectionService:
    def __init__(
        self,
        *,
        clients: dict[str, SecretStr],
        limiter: RateLimiter,
        access: AccessTokenCodec,
        sessions: SessionService,
        clock: Clock,
        issuer: str,
        audience: str,
        service_clients: ServiceClients,
    ) -> None:
        self._clients = clients
        self._limiter = limiter
        self._access = access
        self._sessions = sessions
        self._clock = clock
        self._issuer = issuer
        self._audience = audience
        self._service_clients = service_clients

    def is_client(self, client_id: str, secret: str) -> bool:
        """Constant-time check of a gateway's Basic credentials against INTROSPECTION_CLIENTS."""
        expected = self._clients.get(client_id)
        # Compare against something even for an unknown id, so timing does not reveal ids.
        reference = expected.get_secret_value() if expected else "\x00" * 32
        return hmac.compare_digest(reference.encode(), secret.encode()) and expected is not None

    async def authenticate_client(
        self,
        uow: UnitOfWork,
        client: ClientInfo,
        credentials: tuple[str, str] | None,
    ) -> str | None:
        """The authenticated client id, or None: a failure is counted against the caller's IP
        and audited (`introspection.client_failed`, with the client id tried, never the
        secret). An IP whose failures are used up is refused (429) before any check."""
        ip = client.ip or "unknown"
        await self._limiter.check("introspect_failures", ip)
        if credentials is not None and self.is_client(*credentials):
            return credentials[0]
        await self._limiter.count("introspect_failures", ip)
        await record(
            await uow.connection(),
            "introspection.client_failed",
            now=self._clock.now(),
            client=client,
            client_id=credentials[0][:64] if credentials else None,
        )
        return None

    async def introspect(self, token: str, hint: str | None) -> IntrospectionResponse:
        """Never slides a session: a gateway asking is not the user being active."""
        order = (self._refresh, self._access_token)
        if hint != "refresh_token":
            order = (self._access_token, self._refresh)
        for attempt in order:
            result = await attempt(token)
            if result is not None:
                return result
        return INACTIVE

    async def _access_token(self, token: str) -> IntrospectionResponse | None:
        now = self._clock.now()
        try:
            claims = self._access.verify(token, now=now)
            if isinstance(claims, ServiceClaims):
                return await self._service_token(claims)
            state = self._sessions.require_usable(await self._sessions.load(claims.session_id), now)
        except DomainError:
            return None
        if state.user_id != claims.user_id:
            return None
        return self._active(
            "access_token",
            user_id=claims.user_id,
            session_id=claims.session_id,
            role=state.role,  # the account's role now, not the one the token was issued with
            issued_at=claims.issued_at,
            expires_at=claims.expires_at,
            jkt=claims.jkt,
        )

    async def _service_token(self, claims: ServiceClaims) -> IntrospectionResponse | None:
        """A service client's token: active while unexpired (checked by `verify`) and while its
        client is enabled (read now). No session, so no `sid` and no role."""
        if not await self._service_clients.is_active(claims.client_id):
            return None
        return IntrospectionResponse(
            active=True,
            token_type="access_token",  # noqa: S106 - a token type name
            sub=f"client:{claims.client_id}",
            scope=claims.scope,
            iss=self._issuer,
            aud=self._audience,
            iat=int(claims.issued_at.timestamp()),
            exp=int(claims.expires_at.timestamp()),
            client_id=claims.client_id,
            cnf=_cnf(claims.jkt),
        )

    async def _refresh(self, token: str) -> IntrospectionResponse | None:
        if len(token) > 512:
            return None
        now = self._clock.now()
        link = await self._sessions.describe_refresh_token(token)
        if link is None or link.used_at is not None:
            return None
        try:
            state = self._sessions.require_usable(link.session, now)
        except DomainError:
            return None
        return self._active(
            "refresh_token",
            user_id=state.user_id,
            session_id=state.id,
            role=state.role,
            issued_at=state.created_at,
            expires_at=min(state.idle_expires_at, state.absolute_expires_at),
            jkt=await self._sessions.bound_key(state.id),  # RFC 9449 §6.2: its session's key
        )

    def _active(
        self,
        token_type: Literal["access_token", "refresh_token"],
        *,
        user_id: uuid.UUID,
        session_id: uuid.UUID,
        role: str,
        issued_at: datetime,
        expires_at: datetime,
        jkt: str | None = None,
    ) -> IntrospectionResponse:
        return IntrospectionResponse(
            active=True,
            token_type=token_type,
            sub=str(user_id),
            sid=str(session_id),
            role=role,
            scope=role,
            iss=self._issuer,
            aud=self._audience,
            iat=int(issued_at.timestamp()),
            exp=int(expires_at.timestamp()),
            cnf=_cnf(jkt),
        )


def _cnf(jkt: str | None) -> dict[str, str] | None:
    return {"jkt": jkt} if jkt is not None else None
