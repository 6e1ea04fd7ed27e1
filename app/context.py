"""The composition root: everything a request needs, built once per process at startup."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.tokens import AccessTokenCodec
from app.core.clock import Clock
from app.core.db import UnitOfWork, create_engine
from app.core.ratelimit import RateLimiter
from app.core.security import CsrfTokenCodec, PasswordHasher, RefreshTokenCodec
from app.core.settings import Settings
from app.keys.service import KeyRing, ensure_signing_key, load_file_key_ring, load_key_ring
from app.sessions.cache import SessionStateCache
from app.sessions.service import SessionPolicy


@dataclass(slots=True)
class AppContext:
    """Per-process state; `key_ring` is replaced as keys rotate (see `reload_keys`)."""

    settings: Settings
    engine: AsyncEngine
    clock: Clock
    policy: SessionPolicy
    passwords: PasswordHasher
    refresh_codec: RefreshTokenCodec
    csrf_codec: CsrfTokenCodec
    access_codec: AccessTokenCodec
    key_ring: KeyRing
    limiter: RateLimiter
    session_cache: SessionStateCache


async def build_context(
    settings: Settings, clock: Clock, engine: AsyncEngine | None = None
) -> AppContext:
    engine = engine or create_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout,
    )
    secret = settings.secret_key.get_secret_value()
    if settings.jwt_private_key_file is None:
        algorithm = settings.jwt_algorithm.value
        await ensure_signing_key(engine, algorithm=algorithm, secret=secret, now=clock.now())
    key_ring = await _key_ring(settings, engine, clock)
    return AppContext(
        settings=settings,
        engine=engine,
        clock=clock,
        policy=SessionPolicy(
            idle_timeout=timedelta(seconds=settings.idle_timeout),
            absolute_lifetime=timedelta(seconds=settings.session_absolute_lifetime),
            touch_interval=timedelta(seconds=settings.session_touch_interval),
        ),
        passwords=PasswordHasher(settings.password_hash_threads),
        refresh_codec=RefreshTokenCodec(secret),
        csrf_codec=CsrfTokenCodec(secret),
        access_codec=AccessTokenCodec(
            key_ring,
            issuer=settings.issuer,
            audience=settings.jwt_audience,
            ttl=settings.access_token_ttl,
            leeway=settings.jwt_leeway,
        ),
        key_ring=key_ring,
        limiter=RateLimiter(
            settings.rate_limits,
            redis_url=settings.redis_url,
            enabled=settings.rate_limits_enabled,
            namespace=settings.rate_limit_namespace,
        ),
        session_cache=SessionStateCache(settings.session_cache_ttl),
    )


async def _key_ring(settings: Settings, engine: AsyncEngine, clock: Clock) -> KeyRing:
    if settings.jwt_private_key_file is not None:
        return await asyncio.to_thread(
            load_file_key_ring, settings.jwt_private_key_file, settings.jwt_public_key_files
        )
    return await load_key_ring(
        engine,
        secret=settings.secret_key.get_secret_value(),
        now=clock.now(),
        token_lifetime=settings.token_lifetime,
    )


async def reload_keys(ctx: AppContext) -> None:
    """Pick up rotated keys: publish new ones, sign with the newly active one, drop retired."""
    ring = await _key_ring(ctx.settings, ctx.engine, ctx.clock)
    ctx.key_ring = ring
    ctx.access_codec.use(ring)


def forget_sessions_after_commit(ctx: AppContext, uow: UnitOfWork) -> None:
    """Call after revoking sessions: once committed, this process stops trusting cached rows."""
    uow.after_commit(ctx.session_cache.clear)
