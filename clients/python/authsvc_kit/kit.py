"""The kit: one object per downstream service, holding its keys, revocations and sockets."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
from starlette.types import Receive, Scope, Send

from authsvc_kit.backchannel import BackchannelReceiver
from authsvc_kit.config import KitConfig
from authsvc_kit.dpop import (
    MemoryReplayCache,
    Presentation,
    ProofChecker,
    ReplayCache,
    RequestUrl,
)
from authsvc_kit.errors import AuthError, SessionRevoked
from authsvc_kit.keys import JwksCache
from authsvc_kit.live import LiveChecker
from authsvc_kit.principal import Principal
from authsvc_kit.revocation import MemoryRevocations, RevocationStore
from authsvc_kit.verifier import AccessTokenVerifier
from authsvc_kit.websocket import SocketRegistry, WebSocketSession

if TYPE_CHECKING:
    from fastapi import FastAPI


class Kit:
    def __init__(self, config: KitConfig, *, revocations: RevocationStore | None = None) -> None:
        self.config = config
        self._http: httpx.AsyncClient | None = None
        self.keys = JwksCache(config, self.http)
        self.verifier = AccessTokenVerifier(config, self.keys)
        self.revocations = revocations or _store(config)
        self.dpop = ProofChecker(config, _replay_cache(config))
        self.request_url = RequestUrl(config.public_url, config.trusted_proxies)
        self.sockets = SocketRegistry(
            max_per_session=config.ws_max_per_session,
            max_pending=config.ws_max_pending,
            max_connections=config.ws_max_connections,
            revoked=self.revocations.knows,
        )
        self.revocations.add_listener(self.sockets.on_revocation)
        self.live = LiveChecker(config, self.http) if config.live_check else None
        self._receiver: BackchannelReceiver | None = None
        self._started = False

    @classmethod
    def from_env(cls, **overrides: Any) -> Kit:
        return cls(KitConfig.from_env(**overrides))

    def http(self) -> httpx.AsyncClient:
        """One connection pool for every call to the auth service; each call has a timeout."""
        if self._http is None:
            timeout = httpx.Timeout(self.config.http_timeout)
            self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        return self._http

    async def start(self) -> None:
        if not self._started:
            self._started = True
            await self.revocations.start()

    async def aclose(self) -> None:
        await self.keys.aclose()
        await self.revocations.aclose()
        await self.dpop.replay.aclose()
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        self._started = False

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: object = None) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.aclose()

    async def authenticate(self, token: str, presentation: Presentation | None = None) -> Principal:
        """The caller behind `token`, or the AuthError refusing it (401, or 503 when a check
        cannot be made). Local verification, the DPoP binding, the revoked sessions, then the
        live check. Without `presentation` (how a request presented the token: its scheme,
        proof, method and URL) the token is taken as a Bearer token: a DPoP-bound one is refused."""
        try:
            principal = await self.verifier.verify(token)
            await self.dpop.enforce(principal, token, presentation)
            if await self.revocations.is_revoked(principal):
                raise SessionRevoked()
            if self.live is not None:
                await self.live.check(token, presentation if principal.dpop_jkt else None)
        except AuthError as exc:
            if presentation is not None and presentation.scheme == "dpop" and exc.status == 401:
                exc.dpop_algs = exc.dpop_algs or self.dpop.algorithms
            raise
        return principal

    @property
    def backchannel(self) -> BackchannelReceiver:
        """The ASGI endpoint to mount where the auth service POSTs logout tokens."""
        if self._receiver is None:
            self._receiver = BackchannelReceiver(self.config, self.keys, self.revocations)
        return self._receiver

    def websocket_session(self, scope: Scope, receive: Receive, send: Send) -> WebSocketSession:
        return WebSocketSession(
            scope,
            receive,
            send,
            authenticate=self.authenticate,
            url=self.request_url,
            registry=self.sockets,
            auth_timeout=self.config.ws_auth_timeout,
            expiry_margin=self.config.ws_expiry_margin,
        )

    def install(
        self, app: FastAPI, *, backchannel_path: str | None = "/backchannel-logout"
    ) -> None:
        """Middleware, error handler and the back-channel receiver on a FastAPI app."""
        from authsvc_kit.fastapi import install

        install(self, app, backchannel_path=backchannel_path)


def _store(config: KitConfig) -> RevocationStore:
    if config.redis_url is None:
        return MemoryRevocations()
    from authsvc_kit.redis_store import RedisRevocations

    return RedisRevocations(
        config.redis_url,
        namespace=config.redis_namespace,
        timeout=config.redis_timeout,
        fail_closed=config.redis_fail_closed,
    )


def _replay_cache(config: KitConfig) -> ReplayCache:
    if config.redis_url is None:
        return MemoryReplayCache()
    from authsvc_kit.redis_store import RedisReplayCache

    return RedisReplayCache(
        config.redis_url, namespace=config.redis_namespace, timeout=config.redis_timeout
    )
