"""Logout tokens (OpenID Connect Back-Channel Logout 1.0 §2.4), signed at send time with the
key that signs access tokens, and their delivery to each client's back-channel logout URI
(§2.5, §2.8). No inbound HTTP here; the outbound POST is this sender's own transport."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import httpx
import jwt

from app.backchannel.repository import KIND
from app.keys.service import KeySet
from app.outbox.service import Attempt, ClaimedMessage, Subject

LOGOUT_TOKEN_TYPE = "logout+jwt"  # noqa: S105 - a media type (§2.4, explicit typing)
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# The give-up's audit event (and log line): fixed, filtered on by log pipelines.
FAILURE_EVENT = "backchannel.failed"
# A logout token is checked as it arrives: it only has to live for one attempt. Each attempt
# signs a new one (fresh iat, exp and jti), so a retry after an outage is never expired.
TOKEN_LIFETIME = 120


class LogoutTokenSigner:
    def __init__(self, keys: KeySet, *, issuer: str, lifetime: int = TOKEN_LIFETIME) -> None:
        self._keys = keys
        self._issuer = issuer
        self._lifetime = lifetime

    def sign(self, *, audience: str, user_id: str, session_id: str, now: datetime) -> str:
        """`sub` and `sid` are the access tokens' own (the user id and the session id), so a
        receiver matches them against the tokens it has seen. No `nonce` (§2.4 forbids it)."""
        iat = int(now.timestamp())
        claims = {
            "iss": self._issuer,
            "aud": audience,
            "iat": iat,
            "exp": iat + self._lifetime,
            "jti": uuid.uuid4().hex,
            "sub": user_id,
            "sid": session_id,
            "events": {LOGOUT_EVENT: {}},
        }
        signer = self._keys.ring.signer
        return jwt.encode(
            claims,
            signer.private_key,
            algorithm=signer.algorithm,
            headers={"kid": signer.kid, "typ": LOGOUT_TOKEN_TYPE},
        )


class BackchannelLogoutSender:
    """POSTs `logout_token=<JWT>` (form-encoded) to the client's URI. 2xx is delivered (the
    spec's 200, and the 204 some frameworks turn it into); 400 is the receiver refusing the
    token (§2.8): definitive, given up and audited; anything else, a timeout or a connection
    failure is tried again. Redirects are not followed (a 3xx is a failed attempt)."""

    kind = KIND
    failure_event = FAILURE_EVENT

    def __init__(
        self,
        signer: LogoutTokenSigner,
        clients: Mapping[str, str],
        *,
        timeout: float,
        give_up_after: int,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._signer = signer
        self._clients = dict(clients)
        self._timeout = timeout
        self.give_up_after = timedelta(seconds=give_up_after)
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            follow_redirects=False,
            headers={"User-Agent": "authsvc-backchannel-logout"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def subject(self, payload: Mapping[str, Any]) -> Subject:
        return Subject(
            user_id=_uuid_or_none(payload.get("sub")),
            session_id=_uuid_or_none(payload.get("sid")),
            details={"client_id": str(payload.get("client_id"))},
        )

    async def send(self, message: ClaimedMessage, now: datetime) -> Attempt:
        payload = message.payload
        client_id = str(payload["client_id"])
        uri = self._clients.get(client_id)
        if uri is None:  # removed from BACKCHANNEL_LOGOUT_CLIENTS since the session ended
            return Attempt(delivered=False, error="client_unknown", definitive=True)
        token = self._signer.sign(
            audience=client_id, user_id=payload["sub"], session_id=payload["sid"], now=now
        )
        try:
            # httpx bounds each phase; this bounds the whole attempt (a receiver trickling
            # bytes would otherwise hold it for ever).
            async with asyncio.timeout(self._timeout):
                status = await self._post(uri, token)
        except TimeoutError:
            return Attempt(delivered=False, error="timeout")
        except httpx.TimeoutException:
            return Attempt(delivered=False, error="timeout")
        except httpx.ConnectError:
            return Attempt(delivered=False, error="connect_error")
        except httpx.HTTPError:  # the connection broke mid-exchange, or the answer was garbled
            return Attempt(delivered=False, error="transport_error")
        if 200 <= status < 300:
            return Attempt(delivered=True)
        return Attempt(delivered=False, error=f"status_{status}", definitive=status == 400)

    async def _post(self, uri: str, token: str) -> int:
        # The answer's body is never read: only its status matters (§2.8).
        async with self._http.stream("POST", uri, data={"logout_token": token}) as response:
            return response.status_code


def _uuid_or_none(value: object) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None
