"""Optional live check: ask the auth service whether the token's session is still alive.

For services that cannot wait for a back-channel logout (or do not receive them): each request
costs one call to `GET /auth/verify` (which answers 200 for a live session and 401 with the
reason in `X-Auth-Error` otherwise), and its answer is reused for `live_check_ttl` seconds (at
most 30) in a bounded cache keyed by the token's hash. Note that /auth/verify counts as user
activity: it slides the session like any request would. Any other answer, or no answer in
time, is a 503: a service that asked for live checks does not silently skip them.

A DPoP-bound token is asked about as the gateway would (docs/gateway.md): `Authorization: DPoP`,
the client's proof, and the original request in X-Forwarded-Method/-Proto/-Host/-Uri, since the
proof names that request, not this call. When the auth service requires DPoP nonces its
`use_dpop_nonce` answer (and nonce) is passed on to the client, which retries with it."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from authsvc_kit.config import KitConfig
from authsvc_kit.dpop import Presentation
from authsvc_kit.errors import (
    AuthError,
    ClientDisabled,
    InvalidDPoPProof,
    InvalidToken,
    IssuerUnavailable,
    SessionRevoked,
    TokenExpired,
    UseDPoPNonce,
)

MAX_TTL = 30.0
_PROOF_REFUSALS = frozenset({"invalid_dpop_proof", "use_dpop_nonce"})
_MAX_NONCE = 256
_REFUSALS: dict[str, type[AuthError]] = {
    "token_expired": TokenExpired,
    "session_revoked": SessionRevoked,
    "session_expired": SessionRevoked,
    "client_disabled": ClientDisabled,
    "invalid_dpop_proof": InvalidDPoPProof,
}


class LiveChecker:
    def __init__(
        self,
        config: KitConfig,
        http: Callable[[], httpx.AsyncClient],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = f"{config.base_url}/auth/verify"
        self._timeout = config.http_timeout
        self._ttl = min(max(config.live_check_ttl, 0.0), MAX_TTL)
        self._size = max(config.live_check_cache_size, 1)
        self._http = http
        self._clock = clock
        self._answers: OrderedDict[bytes, tuple[float, str | None]] = OrderedDict()
        self.calls = 0

    async def check(self, token: str, bound: Presentation | None = None) -> None:
        """Returns for a live session; raises the refusal otherwise. `bound`: how a DPoP-bound
        token was presented (its proof already checked here), forwarded with it."""
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        cached = self._answers.get(key)
        if cached is None or cached[0] <= now:
            refusal = await self._ask(token, bound)
            if refusal not in _PROOF_REFUSALS:  # about this proof, not the token: not kept
                self._remember(key, (now + self._ttl, refusal))
        else:
            refusal = cached[1]
        if refusal is not None:
            raise _REFUSALS.get(refusal, InvalidToken)()

    async def _ask(self, token: str, bound: Presentation | None) -> str | None:
        """None for a live session, else the refusal's code (UseDPoPNonce raised at once)."""
        self.calls += 1
        try:
            response = await self._http().get(
                self._url, headers=_headers(token, bound), timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            raise IssuerUnavailable("The auth service cannot be asked right now.") from exc
        if response.status_code == 200:
            return None
        if response.status_code == 401:
            code = str(response.headers.get("x-auth-error", "invalid_token"))
            nonce = response.headers.get("dpop-nonce")
            if code == "use_dpop_nonce" and nonce and len(nonce) <= _MAX_NONCE:
                raise UseDPoPNonce(nonce)
            return code
        raise IssuerUnavailable("The auth service cannot be asked right now.")

    def _remember(self, key: bytes, answer: tuple[float, str | None]) -> None:
        self._answers[key] = answer
        self._answers.move_to_end(key)
        while len(self._answers) > self._size:
            self._answers.popitem(last=False)


def _headers(token: str, bound: Presentation | None) -> dict[str, str]:
    if bound is None or bound.proof is None:
        return {"Authorization": f"Bearer {token}"}
    url = urlsplit(bound.url)
    return {
        "Authorization": f"DPoP {token}",
        "DPoP": bound.proof,
        "X-Forwarded-Method": bound.method,
        "X-Forwarded-Proto": {"ws": "http", "wss": "https"}.get(url.scheme, url.scheme),
        "X-Forwarded-Host": url.netloc,
        "X-Forwarded-Uri": url.path,
    }
