"""The client_credentials grant (RFC 6749 §4.4): a registered service client gets a short-lived
access token of its own, with no user, no session and no refresh token.

Client authentication (RFC 6749 §2.3.1) is client_secret_basic or client_secret_post, never
both. Every failure is audited (`client.auth_failed`, with the id tried and why, never the
secret) and answered `invalid_client`; every token issued is audited (`client.token_issued`).
Requests are limited per client IP before the secret is checked, and tokens per client after.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote_plus

from app.audit.service import record
from app.auth.errors import OAuthError
from app.auth.tokens import AccessTokenCodec, IssuedAccessToken
from app.clients.errors import InvalidClientValue
from app.clients.service import ServiceClients, check_words
from app.core.client import ClientInfo
from app.core.clock import Clock
from app.core.db import UnitOfWork
from app.core.ratelimit import RateLimiter

_BASIC = "client_secret_basic"
_POST = "client_secret_post"
_MAX_CREDENTIAL = 256


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    client_id: str
    secret: str
    method: str  # client_secret_basic or client_secret_post


@dataclass(frozen=True, slots=True)
class ServiceToken:
    access: IssuedAccessToken
    scope: str | None
    jkt: str | None = None  # the DPoP key the token is bound to

    @property
    def token_type(self) -> Literal["Bearer", "DPoP"]:
        return "DPoP" if self.jkt is not None else "Bearer"


class InvalidClient(OAuthError):
    """RFC 6749 §5.2 invalid_client: 401, with the Basic challenge when the client tried Basic
    (a MUST there) or sent no credentials at all (telling it which scheme to use)."""

    def __init__(self, description: str, *, challenge: bool) -> None:
        super().__init__("invalid_client", description, status=401)
        self._challenge = challenge

    def headers(self) -> dict[str, str]:
        headers = super().headers()
        if self._challenge:
            headers["WWW-Authenticate"] = 'Basic realm="authsvc", charset="UTF-8"'
        return headers


def client_credentials(
    authorization: str | None, client_id: str | None, client_secret: str | None
) -> ClientCredentials | None:
    """The credentials of a token request, from the Basic header or the form; None when there
    are none. Both at once is refused (RFC 6749 §2.3: one method per request)."""
    basic = _basic(authorization) if authorization is not None else None
    posted = client_id is not None or client_secret is not None
    if basic is not None and posted:
        raise OAuthError("invalid_request", "use one client authentication method, not two")
    if basic is not None:
        return basic
    if posted:
        if not client_id or not client_secret:
            raise InvalidClient("client_id and client_secret are both required", challenge=False)
        return ClientCredentials(client_id, client_secret, _POST)
    return None


def _basic(authorization: str) -> ClientCredentials | None:
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidClient("malformed Basic credentials", challenge=True) from exc
    user, colon, password = decoded.partition(":")
    if not colon or len(decoded) > 2 * _MAX_CREDENTIAL:
        raise InvalidClient("malformed Basic credentials", challenge=True)
    # RFC 6749 §2.3.1: id and secret are form-urlencoded before they are joined.
    return ClientCredentials(unquote_plus(user), unquote_plus(password), _BASIC)


class ClientCredentialsGrant:
    def __init__(
        self,
        *,
        clients: ServiceClients,
        access: AccessTokenCodec,
        limiter: RateLimiter,
        clock: Clock,
    ) -> None:
        self._clients = clients
        self._access = access
        self._limiter = limiter
        self._clock = clock

    async def issue(
        self,
        uow: UnitOfWork,
        client: ClientInfo,
        credentials: ClientCredentials | None,
        *,
        scope: str | None,
        audience: str | None,
        dpop_jkt: str | None = None,
    ) -> ServiceToken | OAuthError:
        """The token (bound to the DPoP key `dpop_jkt` if the request proved one), or the RFC
        6749 error to answer with. Returned, not raised: a failure's audit row commits with
        the unit of work. The caller has counted the request against `client_token_ip`."""
        if credentials is None:
            return InvalidClient("client authentication is required", challenge=True)
        conn = await uow.connection()
        now = self._clock.now()
        check = await self._clients.authenticate(
            conn, credentials.client_id[:_MAX_CREDENTIAL], credentials.secret, now
        )
        if check.client is None:
            await record(
                conn,
                "client.auth_failed",
                now=now,
                client=client,
                client_id=credentials.client_id[:64],
                reason=check.failure,
                method=credentials.method,
            )
            return InvalidClient(
                "client authentication failed", challenge=credentials.method == _BASIC
            )
        registered = check.client
        await self._limiter.hit("client_token_client", registered.client_id)
        try:
            scopes = check_words((scope or "").split())
            audiences = check_words((audience or "").split())
        except InvalidClientValue:
            return OAuthError("invalid_request", "malformed scope or audience")
        if not set(scopes) <= set(registered.scopes):
            return OAuthError("invalid_scope", "a requested scope is not allowed for this client")
        if not set(audiences) <= set(registered.audiences):
            # RFC 8707 §2's error for a target the client may not have.
            return OAuthError("invalid_target", "a requested audience is not allowed")
        granted = " ".join(scopes) or None
        access = self._access.issue_service(
            client_id=registered.client_id,
            audiences=audiences,
            scope=granted,
            now=now,
            jkt=dpop_jkt,
        )
        await record(
            conn,
            "client.token_issued",
            now=now,
            client=client,
            client_id=registered.client_id,
            method=credentials.method,
            scope=granted,
            audiences=list(audiences),
            expires_in=access.expires_in,
            dpop=dpop_jkt is not None,
        )
        return ServiceToken(access=access, scope=granted, jkt=dpop_jkt)
