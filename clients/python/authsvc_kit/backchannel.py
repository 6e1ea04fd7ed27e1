"""OpenID Connect Back-Channel Logout 1.0 receiver (§2.5-2.8), as a pure ASGI endpoint.

The auth service POSTs `logout_token=<JWT>` (form-encoded) when a session ends. The token is
validated as §2.6 says: signature by a key of the issuer's JWKS (the same cache the access
tokens use), `typ: logout+jwt` (no access token can pass for one, nor the reverse), `iss`,
`aud` = this service's client id, `iat` within a window, `exp` (required since errata set 1,
§2.4), the back-channel `events` member, no `nonce`, a `sid` and/or `sub`, and a `jti` never
seen before. Then the session (or, with no sid, every token of that user issued up to `iat`) is
refused from this moment and its WebSockets are closed. 200 on success; 400 `invalid_request`
otherwise, with one fixed description whatever failed (the caller is not authenticated yet: the
reason is logged, not told); 503 when the keys or the shared revocation list cannot be reached,
so the sender retries.

A sub-only logout's cut-off is the logout token's `iat`, the time it was signed: an issuer that
re-signs each delivery attempt (ours does, but always names a `sid`) moves it to the attempt
that got through, which may also refuse tokens issued between the logout and that attempt
(the user signs in again; never the reverse)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import jwt
from starlette.types import Receive, Scope, Send

from authsvc_kit.config import KitConfig
from authsvc_kit.errors import AuthError, Unavailable
from authsvc_kit.keys import JwksCache
from authsvc_kit.revocation import Revocation, RevocationStore
from authsvc_kit.verifier import LOGOUT_TOKEN_TYPES, checked_header

logger = logging.getLogger("authsvc_kit.backchannel")
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
MAX_BODY = 16 * 1024
REFUSED = "the logout token is missing or invalid"


class InvalidLogoutToken(Exception):
    pass


class BackchannelReceiver:
    def __init__(
        self,
        config: KitConfig,
        keys: JwksCache,
        revocations: RevocationStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not config.client_id:
            raise ValueError("a back-channel receiver needs the service's client_id")
        self._config = config
        self._client_id = config.client_id
        self._keys = keys
        self._revocations = revocations
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _respond(send, 405, {"error": "invalid_request"}, {"Allow": "POST"})
            return
        status, body = await self.handle(await _read_body(receive))
        await _respond(send, status, body)

    async def handle(self, body: bytes | None) -> tuple[int, dict[str, Any]]:
        """The status and JSON body for one request's raw form body."""
        try:
            token = _logout_token(body)
            claims = await self._validate(token)
            await self._apply(claims)
        except InvalidLogoutToken as exc:
            logger.info("authsvc_kit.backchannel_refused", extra={"reason": str(exc)})
            return 400, {"error": "invalid_request", "error_description": REFUSED}
        except Unavailable as exc:
            logger.warning("authsvc_kit.backchannel_unavailable", extra={"code": exc.code})
            return 503, {"error": "temporarily_unavailable", "error_description": exc.detail}
        logger.info("authsvc_kit.backchannel_logout", extra={"has_sid": "sid" in claims})
        return 200, {}

    async def _validate(self, token: str) -> dict[str, Any]:
        try:
            header = checked_header(token, LOGOUT_TOKEN_TYPES, self._config.algorithms)
            key = await self._keys.key(header["kid"])
        except Unavailable:
            raise
        except AuthError as exc:
            raise InvalidLogoutToken(exc.detail) from exc
        if key.algorithm_name != header["alg"]:
            raise InvalidLogoutToken("the token's algorithm is not its key's")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                audience=self._client_id,
                issuer=self._config.token_issuer,
                leeway=self._config.leeway,
                options={"require": ["iss", "aud", "iat", "exp", "jti", "events"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidLogoutToken(f"the logout token does not verify: {exc}") from exc
        self._check_claims(claims)
        return claims

    def _check_claims(self, claims: dict[str, Any]) -> None:
        iat, now = claims["iat"], self._clock()
        if not isinstance(iat, int) or isinstance(iat, bool):
            raise InvalidLogoutToken("iat is not a number")
        if iat < now - self._config.logout_token_max_age - self._config.leeway:
            raise InvalidLogoutToken("the logout token is too old")
        events = claims["events"]
        if not isinstance(events, dict) or not isinstance(events.get(BACKCHANNEL_EVENT), dict):
            raise InvalidLogoutToken("events lacks the back-channel logout event")
        # §2.4: a nonce makes sure an ID token can never pass for a logout token (or back).
        if "nonce" in claims:
            raise InvalidLogoutToken("a logout token carries no nonce")
        sid, sub = claims.get("sid"), claims.get("sub")
        if not isinstance(sid, str) and not isinstance(sub, str):
            raise InvalidLogoutToken("the logout token names neither a sid nor a sub")
        for name in ("sid", "sub"):
            if name in claims and not isinstance(claims[name], str):
                raise InvalidLogoutToken(f"{name} is not a string")
        if not isinstance(claims["jti"], str) or not 0 < len(claims["jti"]) <= 256:
            raise InvalidLogoutToken("jti is not a short string")

    async def _apply(self, claims: dict[str, Any]) -> None:
        # Until no token it refuses can be accepted: one issued up to now by an issuer whose
        # clock runs `leeway` ahead, for max_token_lifetime, accepted `leeway` past its exp.
        keep = self._config.max_token_lifetime + 2 * self._config.leeway
        revocation = Revocation(
            sid=claims.get("sid"),
            sub=None if "sid" in claims else claims.get("sub"),
            issued_at=claims["iat"],
            expires_at=self._clock() + keep,
        )
        # Kept past the iat window, after which the token is refused as too old anyway.
        jti_ttl = self._config.logout_token_max_age + 2 * self._config.leeway
        try:
            fresh = await self._revocations.claim_jti(claims["jti"], jti_ttl)
        except Unavailable:
            # The shared store is down: this replica still ends the session at once (revoke
            # records it here before failing), and the 503 makes the sender retry later.
            await self._revocations.revoke(revocation)
            raise
        if not fresh:
            raise InvalidLogoutToken("this logout token was already received (jti replay)")
        try:
            await self._revocations.revoke(revocation)
        except Unavailable:
            # Not recorded everywhere: let the sender's retry through (no jti replay then).
            await self._revocations.release_jti(claims["jti"])
            raise


def _logout_token(body: bytes | None) -> str:
    if body is None:
        raise InvalidLogoutToken("the request body is too large")
    try:
        form = parse_qs(body.decode("ascii"), strict_parsing=False, max_num_fields=8)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidLogoutToken("the body is not a form") from exc
    values = form.get("logout_token", [])
    if len(values) != 1 or not values[0]:
        raise InvalidLogoutToken("logout_token is missing")
    return values[0]


async def _read_body(receive: Receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    payload = json.dumps(body).encode()
    # §2.8: the response must not be cached.
    raw = {
        "content-type": "application/json",
        "content-length": str(len(payload)),
        "cache-control": "no-store",
        **(headers or {}),
    }
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.lower().encode(), v.encode()) for k, v in raw.items()],
        }
    )
    await send({"type": "http.response.body", "body": payload})
