"""Optional live check: ask the auth service whether the token's session is still alive.

For services that cannot wait for a back-channel logout (or do not receive them): each request
costs one call to `GET /auth/verify` (which answers 200 for a live session and 401 with the
reason in `X-Auth-Error` otherwise), and its answer is reused for `live_check_ttl` seconds (at
most 30) in a bounded cache keyed by the token's hash. Note that /auth/verify counts as user
activity: it slides the session like any request would. Any other answer, or no answer in
time, is a 503: a service that asked for live checks does not silently skip them."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable

import httpx

from authsvc_kit.config import KitConfig
from authsvc_kit.errors import (
    AuthError,
    ClientDisabled,
    InvalidToken,
    IssuerUnavailable,
    SessionRevoked,
    TokenExpired,
)

MAX_TTL = 30.0
_REFUSALS: dict[str, type[AuthError]] = {
    "token_expired": TokenExpired,
    "session_revoked": SessionRevoked,
    "session_expired": SessionRevoked,
    "client_disabled": ClientDisabled,
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

    async def check(self, token: str) -> None:
        """Returns for a live session; raises the refusal otherwise."""
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        cached = self._answers.get(key)
        if cached is None or cached[0] <= now:
            refusal = await self._ask(token)
            self._remember(key, (now + self._ttl, refusal))
        else:
            refusal = cached[1]
        if refusal is not None:
            raise _REFUSALS.get(refusal, InvalidToken)()

    async def _ask(self, token: str) -> str | None:
        self.calls += 1
        try:
            response = await self._http().get(
                self._url, headers={"Authorization": f"Bearer {token}"}, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            raise IssuerUnavailable("The auth service cannot be asked right now.") from exc
        if response.status_code == 200:
            return None
        if response.status_code == 401:
            return str(response.headers.get("x-auth-error", "invalid_token"))
        raise IssuerUnavailable("The auth service cannot be asked right now.")

    def _remember(self, key: bytes, answer: tuple[float, str | None]) -> None:
        self._answers[key] = answer
        self._answers.move_to_end(key)
        while len(self._answers) > self._size:
            self._answers.popitem(last=False)
