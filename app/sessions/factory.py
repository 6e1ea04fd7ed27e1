"""A session service from the settings: for the composition root and the operator's CLI."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from app.core.clock import Clock
from app.core.ratelimit import RateLimiter
from app.core.settings import Settings
from app.sessions.cache import SessionStateCache
from app.sessions.policy import SessionPolicy
from app.sessions.service import SessionService
from app.sessions.store import SessionStore
from app.sessions.tokens import RefreshTokenCodec


def session_policy(settings: Settings) -> SessionPolicy:
    return SessionPolicy(
        idle_timeout=timedelta(seconds=settings.idle_timeout),
        absolute_lifetime=timedelta(seconds=settings.session_absolute_lifetime),
        touch_interval=timedelta(seconds=settings.session_touch_interval),
        reuse_interval=timedelta(seconds=settings.refresh_reuse_interval),
    )


def build_session_service(
    settings: Settings,
    store: SessionStore,
    *,
    cache: SessionStateCache,
    limiter: RateLimiter,
    clock: Clock,
    on_logout_enqueued: Callable[[], None] | None = None,
) -> SessionService:
    return SessionService(
        store,
        policy=session_policy(settings),
        cache=cache,
        codec=RefreshTokenCodec(settings.secret_key.get_secret_value()),
        limiter=limiter,
        clock=clock,
        logout_clients=tuple(c.client_id for c in settings.backchannel_logout_clients),
        on_logout_enqueued=on_logout_enqueued,
    )
