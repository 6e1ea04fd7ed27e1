"""Application factory: routes, middleware, error handlers, and the per-process context."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, cast

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from sqlalchemy import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.account.router import mfa_router, sessions_router
from app.account.router import router as account_router
from app.admin.router import router as admin_router
from app.auth.middleware import IdentityGate
from app.auth.router import router as auth_router
from app.context import AppContext, build_context, reload_keys
from app.core.admission import Admission, default_max_in_flight
from app.core.clock import Clock
from app.core.docs_page import install_docs_page, install_redoc_page, redoc_bundle_path
from app.core.error_handlers import install_error_handlers
from app.core.exposure import ExposureMap, exposure_of
from app.core.logging import configure_logging
from app.core.metrics import sample
from app.core.middleware import (
    BodyLimit,
    CORSMiddlewareExcept,
    RequestEnvelopeMiddleware,
)
from app.core.periodic import every
from app.core.security import PasswordHasher
from app.core.settings import Environment, Settings, get_settings
from app.demo.router import DEMO_CSP
from app.demo.router import router as demo_router
from app.gateway.router import FORWARD_AUTH_PATHS
from app.gateway.router import router as gateway_router
from app.health.router import router as health_router
from app.keys.router import router as keys_router
from app.ops.router import router as ops_router
from app.recovery.router import register_router, verify_router
from app.recovery.router import router as recovery_router
from app.recovery.service import purge_expired
from app.sessions.push import RevocationListener

logger = logging.getLogger("app")

# Served in every environment: the browser client (auth-client.js) that frontends import. The
# demo's page is not in it (app/demo/demo.html, served by /demo outside production only).
STATIC_DIR = Path(__file__).resolve().parent / "static"

# The framework's routes: the API explorers, Swagger UI's OAuth2 redirect and the schema,
# served when DOCS_ENABLED (by default outside production). They carry no exposure marker.
DOCS_URL, OAUTH2_REDIRECT_URL, REDOC_URL = "/docs", "/docs/oauth2-redirect", "/redoc"
OPENAPI_URL = "/openapi.json"
DOCS_PATHS = (DOCS_URL, OAUTH2_REDIRECT_URL, REDOC_URL, redoc_bundle_path(REDOC_URL), OPENAPI_URL)
# The explorers' Content-Security-Policy: their assets from this origin (fastapi-offline), the
# inline scripts and styles they are built with (the bootstrap script embeds per-request URLs,
# so no fixed hash fits it, and Swagger UI styles elements inline), images as data: URLs,
# ReDoc's search worker from a blob:, and never in a frame.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# Each HTML page's policy (app.core.middleware sets it, with X-Frame-Options: DENY).
PAGE_POLICIES = {
    DOCS_URL: DOCS_CSP,
    OAUTH2_REDIRECT_URL: DOCS_CSP,
    REDOC_URL: DOCS_CSP,
    "/demo": DEMO_CSP,
}

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    engine: AsyncEngine | None = None,
    passwords: PasswordHasher | None = None,
    configure_logs: bool = True,
) -> FastAPI:
    settings = settings or get_settings()
    clock = clock or Clock()
    if configure_logs:
        configure_logging(settings.log_level, json_output=settings.json_logs)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = await build_context(settings, clock, engine, passwords=passwords)
        app.state.ctx = ctx
        app.state.components = ctx.components()
        jobs = [
            asyncio.create_task(
                every(settings.key_reload_interval, lambda: reload_keys(ctx), name="keys.reload")
            ),
            asyncio.create_task(every(2.0, lambda: _sample_metrics(ctx), name="metrics.sample")),
            # Back-channel logouts (and any other outbox message): every replica delivers.
            asyncio.create_task(ctx.outbox.run(), name="outbox"),
        ]
        listen_at = _revocations_url(settings, ctx.engine)
        if listen_at is not None:
            listener = RevocationListener(listen_at, ctx.session_cache, on_revoked=ctx.outbox.wake)
            jobs.append(asyncio.create_task(listener.run(), name="revocation_push"))
        if settings.prune_interval:
            jobs.append(
                asyncio.create_task(
                    every(settings.prune_interval, lambda: _prune(ctx), name="prune")
                )
            )
        logger.info("service.started", extra={"environment": settings.environment.value})
        try:
            yield
        finally:
            for job in jobs:
                job.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job
            ctx.passwords.close()
            await ctx.backchannel.aclose()
            await ctx.dpop.aclose()
            if engine is None:
                await ctx.engine.dispose()

    app = _application(settings, lifespan)
    install_error_handlers(app)
    routers = [
        auth_router,
        health_router,
        keys_router,
        gateway_router,
        sessions_router,
        account_router,
        mfa_router,
        register_router,
        recovery_router,
        verify_router,
        admin_router,
        ops_router,
        demo_router,
    ]
    not_served = []
    if not settings.serves_metrics:
        not_served.append(ops_router)
    if settings.environment is Environment.production:
        not_served.append(demo_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for router in routers:
        if router not in not_served:
            app.include_router(router)
    # Every route's exposure is declared, served or not (the demo and a tokenless /metrics in
    # production, the docs when off): a token sent there meets a 404, not a token check.
    routes = [route for router in routers for route in router.routes]
    app.state.exposure = exposure_of(routes, also_public=DOCS_PATHS)
    add_middleware_stack(
        app, settings, app.state.exposure, page_policies=PAGE_POLICIES, clock=clock
    )
    return app


def _application(settings: Settings, lifespan: Lifespan) -> FastAPI:
    """The FastAPI application, with the API explorers and the schema if DOCS_ENABLED."""
    described: dict[str, Any] = {
        "title": "authsvc",
        "version": "0.1.0",
        "summary": "Sessions that slide while users work: JWT access tokens, rotating refresh "
        "tokens.",
        "lifespan": lifespan,
        # FastAPI's native OpenTelemetry hooks look up the environment on every request (5 %
        # of a worker's time under overload, docs/performance.md); this service exports
        # Prometheus metrics and structured logs of its own.
        "telemetry": {"tracing": False, "metrics": False, "logs": False},
    }
    if not settings.serves_docs:
        return FastAPI(**described, docs_url=None, redoc_url=None, openapi_url=None)
    # Swagger UI and ReDoc assets come from the fastapi-offline package: /docs needs no CDN.
    app = FastAPIOffline(
        **described,
        docs_url=DOCS_URL,
        redoc_url=REDOC_URL,
        openapi_url=OPENAPI_URL,
        swagger_ui_oauth2_redirect_url=OAUTH2_REDIRECT_URL,
        swagger_ui_parameters={"persistAuthorization": True},
    )
    install_docs_page(app, DOCS_URL)
    install_redoc_page(app, REDOC_URL)
    return app


async def _prune(ctx: AppContext) -> None:
    await ctx.sessions.prune(ctx.settings.refresh_token_retention)
    await ctx.dpop.purge()
    await purge_expired(ctx.engine, now=ctx.clock.now())
    async with ctx.engine.begin() as conn:
        await ctx.factors.purge(conn, ctx.clock.now())


async def _sample_metrics(ctx: AppContext) -> None:
    sample(ctx.engine.pool)


def _revocations_url(settings: Settings, engine: AsyncEngine) -> URL | None:
    """Where the revocation listener LISTENs: PostgreSQL itself (SQLite is one node, and a
    transaction-mode pooler cannot hold a LISTEN), None when there is nowhere to."""
    if engine.dialect.name != "postgresql":
        return None
    if not settings.transaction_pooled:
        return engine.url  # the engine tests pass in, or the one DATABASE_URL made
    direct = settings.direct_database_url
    if direct is None:
        logger.warning("revocation_push.off", extra={"reason": "no DATABASE_DIRECT_URL"})
        return None
    return make_url(direct)


def outermost(app: FastAPI, layer: Callable[[ASGIApp], ASGIApp]) -> None:
    """`layer` around the whole application, FastAPI's own layers (ServerErrorMiddleware
    first) and ours included. Starlette builds the layers on the first request; this wraps
    what it builds."""
    build = app.build_middleware_stack

    def build_wrapped() -> ASGIApp:
        return layer(build())

    app.build_middleware_stack = build_wrapped  # type: ignore[method-assign]


def _cors_options(settings: Settings) -> dict[str, Any] | None:
    if not settings.cors_origins:
        return None
    return {
        "excluded_paths": FORWARD_AUTH_PATHS,
        "allow_origins": settings.cors_origins,
        "allow_credentials": True,
        "allow_methods": ["GET", "POST", "DELETE"],
        "allow_headers": [
            "Authorization",
            "Content-Type",
            "DPoP",
            "Session-Transport",
            "X-CSRF-Token",
            "X-Request-ID",
        ],
        # What a frontend on another origin must read: a DPoP client its next nonce and the
        # challenge (RFC 9449 §7.1, §8), and the server's clock for its proofs' iat.
        "expose_headers": ["DPoP-Nonce", "WWW-Authenticate", "Date", "Retry-After"],
    }


def admission_of(settings: Settings) -> Admission:
    max_in_flight = settings.admission_max_in_flight or default_max_in_flight(
        settings.database_url, settings.db_pool_size
    )
    return Admission(max_in_flight=max_in_flight, max_wait=settings.admission_max_wait_ms / 1000)


def add_middleware_stack(
    app: FastAPI,
    settings: Settings,
    exposure: ExposureMap,
    *,
    page_policies: dict[str, str] | None = None,
    clock: Clock | None = None,
) -> None:
    """Every middleware of the service, in order; also used by the benchmark to measure the
    stack's own cost on a bare endpoint (bench.ceiling). `exposure`: what the routes declared
    (app.core.exposure); `page_policies`: the Content-Security-Policy of each HTML page;
    `clock`: the application's, which stamps each request's arrival."""
    cors = _cors_options(settings)
    gate = IdentityGate(exposure=exposure, forward_auth_paths=FORWARD_AUTH_PATHS)

    def layers(inner: ASGIApp) -> ASGIApp:
        # The envelope around the whole application (admission, request id, metrics, body
        # limit, the identity gate): under overload every request it sheds takes event-loop
        # time from the ones it admits, so a shed request runs no more code than it must; and
        # every answer, FastAPI's own 500s included, gets its headers. One layer for all of
        # it: each layer costs every request a call and a coroutine (docs/performance.md).
        outer: ASGIApp = RequestEnvelopeMiddleware(
            inner,
            no_store_prefixes=("/auth/",),
            page_policies=page_policies,
            clock=clock,
            admission=admission_of(settings),
            body_limit=BodyLimit(settings.max_body_bytes),
            gate=gate,
        )
        if cors is not None:  # around it all, so that a browser can read every refusal
            outer = CORSMiddlewareExcept(outer, **cors)
        if settings.trusted_proxies:
            # Client IP and scheme from X-Forwarded-For / -Proto, believed only when the peer
            # is one of TRUSTED_PROXIES (uvicorn's own implementation); otherwise the
            # socket's. First: rate limits and admission see the client.
            proxied = ProxyHeadersMiddleware(cast(Any, outer), settings.trusted_proxies)
            outer = cast(ASGIApp, proxied)  # uvicorn types ASGI more narrowly than Starlette
        return outer

    outermost(app, layers)
