"""keys rotate | revoke | list."""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.clock import Clock
from app.core.db import engine_for
from app.core.settings import Settings
from app.keys import service as keys

_ROTATE_FILES = (
    "rotate by replacing the files (keep the old public key in JWT_PUBLIC_KEY_FILES until its "
    "tokens expire)"
)
# What to do instead when the keys are PEM files (JWT_PRIVATE_KEY_FILE), by action.
_FILE_KEYS = {
    "rotate": _ROTATE_FILES,
    "list": _ROTATE_FILES,
    "revoke": "revoke a leaked key by replacing JWT_PRIVATE_KEY_FILE with a new key and removing "
    "the leaked key's public file from JWT_PUBLIC_KEY_FILES: every replica re-reads the files "
    "at its next key reload",
}
# The reload job sleeps KEY_RELOAD_INTERVAL jittered by up to 20 % (app/core/periodic.py).
_RELOAD_JITTER = 1.2


def run(args: argparse.Namespace, settings: Settings) -> str:
    return asyncio.run(_run_keys(args, settings))


async def _run_keys(args: argparse.Namespace, settings: Settings) -> str:
    if settings.jwt_private_key_file is not None:
        raise SystemExit(f"error: keys come from JWT_PRIVATE_KEY_FILE; {_FILE_KEYS[args.action]}")
    engine = engine_for(settings)
    try:
        if args.action == "rotate":
            return await _rotate(engine, settings, now=args.now)
        if args.action == "revoke":
            return await _revoke(engine, settings, args.kid)
        return await _list(engine, settings)
    finally:
        await engine.dispose()


async def _rotate(engine: AsyncEngine, settings: Settings, *, now: bool) -> str:
    delay = timedelta(0) if now else timedelta(seconds=settings.publish_delay)
    key = await keys.rotate(
        engine,
        algorithm=settings.jwt_algorithm.value,
        secret=settings.secret_key.get_secret_value(),
        now=Clock().now(),
        publish_delay=delay,
        token_lifetime=settings.token_lifetime,
    )
    return f"published key {key.kid}; it signs from {key.activates_at.isoformat()}"


async def _revoke(engine: AsyncEngine, settings: Settings, kid: str) -> str:
    revocation = await keys.revoke(
        engine,
        kid,
        algorithm=settings.jwt_algorithm.value,
        secret=settings.secret_key.get_secret_value(),
        now=Clock().now(),
        token_lifetime=settings.token_lifetime,
    )
    when = revocation.revoked_at.isoformat(timespec="seconds")
    if not revocation.newly_revoked:
        return f"key {kid} was already revoked at {when}"
    lines = [
        f"revoked key {kid} at {when}; every replica stops signing and accepting it, and drops "
        f"it from JWKS, at its next key reload (within "
        f"{settings.key_reload_interval * _RELOAD_JITTER:g} s: KEY_RELOAD_INTERVAL + jitter)"
    ]
    if revocation.replacement is not None:
        lines.append(
            f"it was signing: key {revocation.replacement.kid} signs from now on; gateways "
            f"that cache JWKS learn it when they refetch (at most {settings.jwks_max_age} s)"
        )
    return "\n".join(lines)


async def _list(engine: AsyncEngine, settings: Settings) -> str:
    lines = [f"{'kid':<24} {'alg':<6} {'state':<9} {'created':<26} {'activates':<26} retires"]
    statuses = await keys.list_keys(
        engine, now=Clock().now(), token_lifetime=settings.token_lifetime
    )
    for status in statuses:
        key = status.key
        dates = [key.created_at, key.activates_at, status.retires_at]
        created, activates, retires = (d.isoformat(timespec="seconds") if d else "-" for d in dates)
        lines.append(
            f"{key.kid:<24} {key.algorithm:<6} {status.state:<9} "
            f"{created:<26} {activates:<26} {retires}"
        )
    return "\n".join(lines)
