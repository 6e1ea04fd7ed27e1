"""The issuer's signing keys: discovery, then JWKS, cached as its Cache-Control says.

Stale keys are served at once while one background fetch revalidates them
(stale-while-revalidate): a slow or partitioned issuer never makes a request with a known kid
wait. Only a token naming an unknown kid (a key rotated in early, or a forgery) waits for a
fetch, bounded by the HTTP timeouts. At most one fetch runs at a time, and a new one starts at
least `min_refetch_interval` after the previous one ended, so a stream of unknown kids (or a
down issuer) cannot turn every request into a call to the auth service. When a fetch fails the
keys already known keep verifying; with none known the caller gets `IssuerUnavailable` (503).

Discovery's `jwks_uri` must be https on the issuer's host (http only where the issuer itself
may be http: loopback, or `allow_http`): a discovery answer cannot send us to a key server of
someone else's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt

from authsvc_kit.config import KitConfig
from authsvc_kit.errors import InvalidToken, IssuerUnavailable

logger = logging.getLogger("authsvc_kit.keys")
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)
_NO_CACHE = re.compile(r"(?:^|,)\s*(?:no-store|no-cache)\b", re.IGNORECASE)
MAX_JWKS_AGE = 86_400


def cache_lifetime(cache_control: str | None, default: int) -> int:
    """Seconds a JWKS response may be reused: its max-age, 0 for no-store/no-cache, else
    `default`; never more than a day."""
    if not cache_control:
        return default
    if _NO_CACHE.search(cache_control):
        return 0
    match = _MAX_AGE.search(cache_control)
    return min(int(match.group(1)), MAX_JWKS_AGE) if match else default


class JwksCache:
    def __init__(
        self,
        config: KitConfig,
        http: Callable[[], httpx.AsyncClient],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._http = http
        self._clock = clock
        self._jwks_uri: str | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fresh_until = float("-inf")
        self._last_fetch_end = float("-inf")
        self._fetching: asyncio.Task[None] | None = None
        self.fetches = 0  # JWKS requests made, for tests and metrics

    @property
    def known_kids(self) -> frozenset[str]:
        return frozenset(self._keys)

    async def key(self, kid: str) -> jwt.PyJWK:
        """The key for `kid`: a known one at once (revalidated in the background when stale);
        an unknown one after a fetch, if the rate allows one."""
        key = self._keys.get(kid)
        if key is not None:
            if self._clock() >= self._fresh_until:
                self._start_fetch()
            return key
        fetch = self._start_fetch()
        if fetch is not None:
            # Shared by every waiter and never cancelled by one: asyncio.wait only waits.
            # The fetch bounds itself (two calls with a timeout each); this is a backstop.
            await asyncio.wait({fetch}, timeout=3 * self._config.http_timeout)
        key = self._keys.get(kid)
        if key is not None:
            return key
        if not self._keys:
            raise IssuerUnavailable()
        raise InvalidToken("The access token was signed by a key this issuer does not publish.")

    async def aclose(self) -> None:
        if self._fetching is not None and not self._fetching.done():
            self._fetching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetching
        self._fetching = None

    def _start_fetch(self) -> asyncio.Task[None] | None:
        """The fetch in flight, a new one if the rate allows, or None."""
        if self._fetching is not None and not self._fetching.done():
            return self._fetching
        if self._clock() - self._last_fetch_end < self._config.min_refetch_interval:
            return None  # bounded rate: the answer stays what the cache holds
        self._fetching = asyncio.get_running_loop().create_task(
            self._refresh(), name="authsvc-kit-jwks"
        )
        return self._fetching

    async def _refresh(self) -> None:
        try:
            keys, max_age = await self._fetch()
        except Exception as exc:  # whatever the issuer sent (or did not): keep what we have
            # Stale keys keep working; an unknown kid stays unknown until the next try.
            logger.warning(
                "authsvc_kit.jwks_fetch_failed",
                extra={"error": type(exc).__name__, "cached_keys": len(self._keys)},
            )
            return
        finally:
            # Measured from the end: a slow issuer is not asked again as soon as it answers.
            self._last_fetch_end = self._clock()
        self._keys = keys
        self._fresh_until = self._clock() + max_age

    async def _fetch(self) -> tuple[dict[str, jwt.PyJWK], int]:
        client = self._http()
        timeout = self._config.http_timeout
        if self._jwks_uri is None:
            response = await client.get(
                f"{self._config.base_url}/.well-known/openid-configuration", timeout=timeout
            )
            response.raise_for_status()
            document = response.json()
            # OpenID Connect Discovery §4.3: the document must name the issuer we expect, or
            # its keys are someone else's.
            if document.get("issuer") != self._config.token_issuer:
                raise ValueError("discovery names another issuer")
            jwks_uri = str(document["jwks_uri"])
            if not self._config.key_source_allowed(jwks_uri):
                logger.error("authsvc_kit.jwks_uri_refused", extra={"jwks_uri": jwks_uri[:200]})
                raise ValueError("jwks_uri is not https on the issuer's host")
            self._jwks_uri = jwks_uri
        response = await client.get(self._jwks_uri, timeout=timeout)
        response.raise_for_status()
        self.fetches += 1
        keys = self._parse(response.json())
        max_age = cache_lifetime(
            response.headers.get("cache-control"), self._config.default_jwks_max_age
        )
        return keys, max_age

    def _parse(self, document: dict[str, Any]) -> dict[str, jwt.PyJWK]:
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document["keys"]:
            kid, alg = entry.get("kid"), entry.get("alg")
            if not isinstance(kid, str) or alg not in self._config.algorithms:
                continue  # a key we could not pin to an allowed algorithm is never used
            if entry.get("use", "sig") != "sig":
                continue
            try:
                keys[kid] = jwt.PyJWK(entry, algorithm=alg)
            except jwt.PyJWTError:
                logger.warning("authsvc_kit.jwks_key_skipped", extra={"kid": kid})
        return keys
