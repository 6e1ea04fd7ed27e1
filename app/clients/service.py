"""Registered service clients: their secrets, and whether each may still get and use tokens.

Secrets are 256 random bits generated here, stored as their SHA-256. A fast unkeyed hash is
right for such secrets (unlike passwords, nothing about them can be guessed: a preimage of a
256-bit random value is out of reach however fast the hash), so a token request costs one
SHA-256 instead of an argon2 run, and the hashes do not depend on SECRET_KEY (rotating it
leaves the clients working). Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.clients import repository
from app.clients.errors import ClientExists, ClientNotFound, InvalidClientId, InvalidClientValue
from app.clients.repository import ClientRecord
from app.core.db import autocommit_connection

CLIENT_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# RFC 6749 §3.3 scope-token: printable ASCII without space, '"' or '\'.
_WORD = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,128}")
_SECRET_BYTES = 32
# Compared against when the client is unknown, so that timing does not tell ids apart.
_NO_HASH = "0" * 64


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _matches(stored: str | None, presented: str) -> bool:
    return hmac.compare_digest((stored or _NO_HASH).encode(), presented.encode())


@dataclass(frozen=True, slots=True)
class ClientCheck:
    """A token request's client authentication: the client, or why it failed (for the audit
    trail: `unknown_client`, `wrong_secret`, `disabled`)."""

    client: ClientRecord | None
    failure: str | None = None


def check_client_id(client_id: str) -> str:
    if not CLIENT_ID.fullmatch(client_id):
        raise InvalidClientId()
    return client_id


def check_words(words: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    if not all(_WORD.fullmatch(word) for word in words):
        raise InvalidClientValue()
    return tuple(dict.fromkeys(words))  # each once, in order


class ServiceClients:
    """The registry. Every method but `is_active` works in the caller's unit of work."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(
        self,
        conn: AsyncConnection,
        client_id: str,
        *,
        audiences: list[str],
        scopes: list[str],
        now: datetime,
    ) -> str:
        """Register a client; its secret is returned once and never stored."""
        check_client_id(client_id)
        if await repository.get(conn, client_id) is not None:
            raise ClientExists()
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        await repository.insert_client(
            conn,
            client_id=client_id,
            secret_hash=hash_secret(secret),
            audiences=check_words(audiences),
            scopes=check_words(scopes),
            now=now,
        )
        return secret

    async def rotate_secret(
        self, conn: AsyncConnection, client_id: str, *, grace: int, now: datetime
    ) -> str:
        """A new secret, returned once. The current one keeps working for `grace` seconds (0:
        it stops at once, for a leaked secret), so that the client's replicas can be given the
        new one without a window of refusals; an older previous secret stops now."""
        client = await self.require(conn, client_id)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        keep = grace > 0
        await repository.set_secret(
            conn,
            client_id,
            secret_hash=hash_secret(secret),
            previous_hash=client.secret_hash if keep else None,
            previous_expires_at=now + timedelta(seconds=grace) if keep else None,
            now=now,
        )
        return secret

    async def disable(self, conn: AsyncConnection, client_id: str, now: datetime) -> bool:
        await self.require(conn, client_id)
        return await repository.disable(conn, client_id, now)

    async def enable(self, conn: AsyncConnection, client_id: str) -> None:
        await self.require(conn, client_id)
        await repository.enable(conn, client_id)

    async def list_clients(self, conn: AsyncConnection) -> list[ClientRecord]:
        return await repository.list_all(conn)

    async def require(self, conn: AsyncConnection, client_id: str) -> ClientRecord:
        client = await repository.get(conn, client_id) if CLIENT_ID.fullmatch(client_id) else None
        if client is None:
            raise ClientNotFound()
        return client

    async def authenticate(
        self, conn: AsyncConnection, client_id: str, secret: str, now: datetime
    ) -> ClientCheck:
        """The client whose id and secret these are, if it is enabled; one SHA-256 and
        constant-time comparisons whatever the outcome."""
        client = await repository.get(conn, client_id) if CLIENT_ID.fullmatch(client_id) else None
        presented = hash_secret(secret)
        current = _matches(client.secret_hash if client else None, presented)
        previous = (
            client is not None
            and client.previous_secret_expires_at is not None
            and client.previous_secret_expires_at > now
            and _matches(client.previous_secret_hash, presented)
        )
        if client is None:
            return ClientCheck(None, "unknown_client")
        if not (current or previous):
            return ClientCheck(None, "wrong_secret")
        if client.disabled_at is not None:
            return ClientCheck(None, "disabled")
        await repository.mark_used(conn, client_id, now)
        return ClientCheck(client)

    async def is_active(self, client_id: str) -> bool:
        """Whether the client exists and is not disabled, read now (no cache): a disabled
        client's live tokens are refused from the next request on, on every replica."""
        async with autocommit_connection(self._engine) as conn:
            found = await repository.disabled_at(conn, client_id)
        return found is not None and found[0] is None
