"""Outgoing calls as a service: an `httpx.Auth` that gets a client_credentials token (RFC 6749
§4.4) from the auth service and puts it on every request.

    auth = ClientCredentialsAuth("https://auth.example.com", "billing", secret)
    async with httpx.AsyncClient(auth=auth, timeout=5) as http:
        await http.get("https://notes.internal/stats")
    await auth.aclose()

The token endpoint comes from the issuer's RFC 8414 metadata (or is given). One token serves
every call until shortly before it expires (`renew_margin`, at most a fifth of its life), and
concurrent calls that find it due wait for one request (single flight). A 401 from the resource
(its token refused: the client's secret rotated with no grace, the issuer's keys changed...)
is retried once with a fresh token. Every call to the auth service has a timeout, and the
secret is never logged nor shown in `repr`. Async only, as the rest of the kit.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus

import httpx

from authsvc_kit.errors import TokenRequestFailed

METADATA_PATH = "/.well-known/oauth-authorization-server"
_METHODS = ("client_secret_basic", "client_secret_post")


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    renew_at: float  # monotonic seconds: fetch a new one from then on
    expires_at: float


class ClientCredentialsAuth(httpx.Auth):
    requires_response_body = False

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str,
        *,
        scope: str | None = None,
        audience: str | None = None,
        method: str = "client_secret_basic",
        token_endpoint: str | None = None,
        renew_margin: float = 30.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}")
        self._issuer = issuer.rstrip("/")
        self.client_id = client_id
        self.__secret = client_secret
        self._scope = scope
        self._audience = audience
        self._method = method
        self._endpoint = token_endpoint
        self._margin = max(renew_margin, 0.0)
        self._timeout = timeout
        self._clock = clock
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._token: _Token | None = None
        self._lock: asyncio.Lock | None = None
        self.token_requests = 0  # how many tokens were fetched (a measure for tests and metrics)

    def __repr__(self) -> str:
        return f"ClientCredentialsAuth(issuer={self._issuer!r}, client_id={self.client_id!r})"

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        raise RuntimeError("ClientCredentialsAuth is async only: use it with httpx.AsyncClient")
        yield request  # pragma: no cover - makes this a generator, as httpx expects

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        # The resource refused a token we believed good: drop it (unless a concurrent call has
        # already replaced it) and try once more with a fresh one.
        self.invalidate(token)
        fresh = await self.token()
        if fresh == token:
            return
        request.headers["Authorization"] = f"Bearer {fresh}"
        yield request

    async def token(self) -> str:
        """The current token, fetched first when there is none or it is due for renewal."""
        current = self._token
        if current is not None and self._clock() < current.renew_at:
            return current.value
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # single flight: the others wait, then find the new token
            current = self._token
            if current is None or self._clock() >= current.renew_at:
                current = self._token = await self._fetch()
            return current.value

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (only if it is still `token`, when given)."""
        if self._token is not None and (token is None or self._token.value == token):
            self._token = None

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> ClientCredentialsAuth:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    def _client(self) -> httpx.AsyncClient:
        # Its own pool: the client this auth is attached to may point anywhere, and must not
        # recurse into this auth for the token request.
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeout),
                follow_redirects=False,
                transport=self._transport,
            )
        return self._http

    async def _token_endpoint(self) -> str:
        if self._endpoint is None:
            metadata = await self._json(await self._call("GET", self._issuer + METADATA_PATH))
            endpoint = metadata.get("token_endpoint")
            if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
                raise TokenRequestFailed("unavailable", "the issuer names no token endpoint")
            self._endpoint = endpoint
        return self._endpoint

    async def _fetch(self) -> _Token:
        endpoint = await self._token_endpoint()
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        if self._audience:
            form["audience"] = self._audience
        headers = {"Accept": "application/json"}
        if self._method == "client_secret_basic":
            # RFC 6749 §2.3.1: each part form-urlencoded, then joined and base64-encoded.
            pair = f"{quote_plus(self.client_id)}:{quote_plus(self.__secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form.update(client_id=self.client_id, client_secret=self.__secret)
        started = self._clock()
        self.token_requests += 1
        response = await self._call("POST", endpoint, data=form, headers=headers)
        body = await self._json(response, allow_error=True)
        if response.status_code != 200:
            error = body.get("error")
            raise TokenRequestFailed(
                error if isinstance(error, str) else "unavailable",
                str(body.get("error_description") or f"HTTP {response.status_code}"),
                status=response.status_code,
            )
        return self._parsed(body, started)

    def _parsed(self, body: dict[str, Any], started: float) -> _Token:
        value, lifetime = body.get("access_token"), body.get("expires_in")
        kind = body.get("token_type")
        if (
            not isinstance(value, str)
            or not value
            or not isinstance(kind, str)
            or kind.lower() != "bearer"
            or not isinstance(lifetime, int)
            or isinstance(lifetime, bool)
            or lifetime <= 0
        ):
            raise TokenRequestFailed("unavailable", "the token endpoint answered out of protocol")
        # Counted from when the request left: the token's life began no earlier than that.
        margin = min(self._margin, lifetime / 5)
        return _Token(value, started + lifetime - margin, started + lifetime)

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._client().request(method, url, **kwargs)
        except httpx.HTTPError as exc:  # timeouts included; never the request (it has the secret)
            raise TokenRequestFailed(
                "unavailable", f"the auth service cannot be reached ({type(exc).__name__})"
            ) from None

    async def _json(self, response: httpx.Response, *, allow_error: bool = False) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or (response.status_code != 200 and not allow_error):
            raise TokenRequestFailed(
                "unavailable",
                f"unexpected answer from the auth service (HTTP {response.status_code})",
            )
        return body
