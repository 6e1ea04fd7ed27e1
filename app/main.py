"""Application factory: routes, middleware, error handlers, and the per-process context."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.routing import Route
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from app.account.router import router as account_router
from app.account.router import sessions_router
from app.admin.router import router as admin_router
from app.auth.middleware import IdentityMiddleware
from app.auth.router import router as auth_router
from app.context import AppContext, build_context, reload_keys
from app.core.clock import Clock
from app.core.error_handlers import install_error_handlers
from app.core.exposure import ExposureMap, exposure_of
from app.core.logging import configure_logging
from app.core.metrics import record_pool
from app.core.middleware import (
    BodyLimitMiddleware,
    CORSMiddlewareExcept,
    RequestEnvelopeMiddleware,
)
from app.core.periodic import every
from app.core.security import PasswordHasher
from app.core.settings import Environment, Settings, get_settings
from app.demo.router import STATIC_DIR
from app.demo.router import router as demo_router
from app.gateway.router import FORWARD_AUTH_PATHS
from app.gateway.router import router as gateway_router
from app.health.router import router as health_router
from app.keys.router import router as keys_router
from app.ops.router import router as ops_router

logger = logging.getLogger("app")


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    engine: AsyncEngine | None = None,
    passwords: PasswordHasher | None = None,
    configure_logs: bool = True,
) -> FastAPI:
    settings = settings or get_settings()
    if configure_logs:
        configure_logging(settings.log_level, json_output=settings.json_logs)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = await build_context(settings, clock or Clock(), engine, passwords=passwords)
        app.state.ctx = ctx
        app.state.components = ctx.components()
        jobs = [
            asyncio.create_task(
                every(settings.key_reload_interval, lambda: reload_keys(ctx), name="keys.reload")
            ),
            asyncio.create_task(every(2.0, lambda: _sample_pool(ctx), name="metrics.pool")),
        ]
        if settings.prune_interval:
            jobs.append(
                asyncio.create_task(
                    every(
                        settings.prune_interval,
                        lambda: ctx.sessions.prune(settings.refresh_token_retention),
                        name="prune",
                    )
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
            if engine is None:
                await ctx.engine.dispose()

    # Swagger UI and ReDoc assets come from the fastapi-offline package: /docs needs no CDN.
    app = FastAPIOffline(
        title="authsvc",
        version="0.1.0",
        summary="Sessions that slide while users work: JWT access tokens, rotating refresh tokens.",
        lifespan=lifespan,
        swagger_ui_parameters={"persistAuthorization": True},
    )
    install_error_handlers(app)
    # What the framework (FastAPIOffline) registered itself: /docs, its OAuth2 redirect, /redoc,
    # /openapi.json. They carry no exposure marker and are public.
    framework_paths = [route.path for route in app.routes if isinstance(route, Route)]
    routers = [
        auth_router,
        health_router,
        keys_router,
        gateway_router,
        sessions_router,
        account_router,
        admin_router,
        ops_router,
    ]
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    if settings.environment is not Environment.production:
        routers.append(demo_router)
    for router in routers:
        app.include_router(router)
    # The demo's exposure is declared even where it is not served: a token sent to /demo in
    # production meets a 404, not a token check.
    routes = [route for router in [*routers, demo_router] for route in router.routes]
    app.state.exposure = exposure_of(routes, also_public=framework_paths)
    add_middleware_stack(app, settings, app.state.exposure)
    return app


async def _sample_pool(ctx: AppContext) -> None:
    record_pool(ctx.engine.pool)


def add_middleware_stack(app: FastAPI, settings: Settings, exposure: ExposureMap) -> None:
    """Every middleware of the service, in order; also used by the benchmark to measure the
    stack's own cost on a bare endpoint (bench.ceiling). `exposure`: what the routes declared
    (app.core.exposure)."""
    # Outermost last: the request envelope wraps everything so every log line has an id.
    app.add_middleware(IdentityMiddleware, exposure=exposure)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddlewareExcept,
            excluded_paths=FORWARD_AUTH_PATHS,
            allow_origins=settings.cors_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Session-Transport",
                "X-CSRF-Token",
                "X-Request-ID",
            ],
        )
    app.add_middleware(RequestEnvelopeMiddleware, no_store_prefixes=("/auth/",))
    if settings.trusted_proxies:
        # Client IP and scheme from X-Forwarded-For / -Proto, believed only when the peer is
        # one of TRUSTED_PROXIES (uvicorn's own implementation); otherwise the socket's.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
