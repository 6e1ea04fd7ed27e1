"""Security primitives: secret derivation, opaque tokens, their hashes, and password hashing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

REFRESH_TOKEN_BYTES = 32  # 256 bits from the OS CSPRNG
_SESSION_ID_CHARS = 22  # 16 bytes in unpadded base64url


def derive_key(secret: str, purpose: str) -> bytes:
    """One independent 256-bit key per purpose, so no key ever serves two roles."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(
        secret.encode()
    )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_opaque_token() -> str:
    return _b64(secrets.token_bytes(REFRESH_TOKEN_BYTES))


class RefreshTokenCodec:
    """Refresh tokens, their hashes for storage, and each token's one successor.

    A token is `<session id>.<256 random bits>`, both base64url. The session id is not a
    secret (access tokens carry it as `sid`); naming the session lets the service check the
    CSRF token and the per-session rate limit before touching the database, and lock the
    session by primary key. Nothing trusts it: the rotation checks that the token's stored
    row belongs to that session.

    The successor is `<session id>.HMAC(successor_key, token)`: any replica can recompute it,
    so a retried or concurrent refresh of the same token answers with the same successor
    without storing it.
    """

    def __init__(self, secret: str) -> None:
        self._hash_key = derive_key(secret, "refresh-token-hash/v1")
        self._successor_key = derive_key(secret, "refresh-token-successor/v1")

    def new_token(self, session_id: uuid.UUID) -> str:
        return f"{_b64(session_id.bytes)}.{new_opaque_token()}"

    def hash(self, token: str) -> bytes:
        return hmac.new(self._hash_key, token.encode(), hashlib.sha256).digest()

    def successor(self, token: str, session_id: uuid.UUID) -> str:
        mac = hmac.new(self._successor_key, token.encode(), hashlib.sha256).digest()
        return f"{_b64(session_id.bytes)}.{_b64(mac)}"

    @staticmethod
    def session_of(token: str) -> uuid.UUID | None:
        """The session a token names, or None for a token without one (issued before tokens
        named their session, or not ours)."""
        prefix, dot, _ = token.partition(".")
        if not dot or len(prefix) != _SESSION_ID_CHARS:
            return None
        try:
            return uuid.UUID(bytes=base64.urlsafe_b64decode(prefix + "=="))
        except ValueError:
            return None


class CsrfTokenCodec:
    """Signed double-submit CSRF tokens bound to a session: HMAC(csrf_key, session id)."""

    def __init__(self, secret: str) -> None:
        self._key = derive_key(secret, "csrf-token/v1")

    def token_for(self, session_id: uuid.UUID) -> str:
        return _b64(hmac.new(self._key, session_id.bytes, hashlib.sha256).digest())

    def matches(self, session_id: uuid.UUID, presented: str) -> bool:
        return hmac.compare_digest(self.token_for(session_id).encode(), presented.encode())


# OWASP Password Storage Cheat Sheet: argon2id, m=19 MiB, t=2, p=1.
_ARGON2 = Argon2Hasher(memory_cost=19 * 1024, time_cost=2, parallelism=1)


def _lower_thread_priority() -> None:
    """Run this (hashing) thread at nice 10. Hashes take tens of milliseconds of CPU; at the
    same priority, a burst of logins would take the cores from the event loops, and every
    other request (refresh, verify) would wait behind them. The scheduler still gives hashing
    every cycle nothing else wants, so login throughput is unchanged on an idle machine."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


def default_hash_threads() -> int:
    """This process's share of the cores it may run on (a container's share, not the host's
    count), split between the server's worker processes (WEB_CONCURRENCY)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    workers = os.environ.get("WEB_CONCURRENCY", "1")
    return max(1, min(cores // max(1, int(workers) if workers.isdigit() else 1), 16))


class PasswordHasher:
    """argon2id for new hashes; bcrypt still verified (and upgraded on the next login).

    Hashing runs on its own pool of one thread per core, at a lower priority (see
    `_lower_thread_priority`): never on the event loop, never more at once than the cores can
    run (each argon2 hash holds 19 MiB), and never ahead of request handling."""

    def __init__(self, threads: int | None = None) -> None:
        self._hash = PasswordHash((_ARGON2, BcryptHasher()))
        # Verifying against this when the user does not exist keeps both paths equally slow.
        self._dummy = self._hash.hash(new_opaque_token())
        self._pool = ThreadPoolExecutor(
            max_workers=threads or default_hash_threads(),
            thread_name_prefix="password-hash",
            initializer=_lower_thread_priority,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def hash(self, password: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._hash.hash, password
        )

    async def verify_and_update(self, password: str, stored: str | None) -> tuple[bool, str | None]:
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, self._verify_sync, password, stored
        )

    def _verify_sync(self, password: str, stored: str | None) -> tuple[bool, str | None]:
        if stored is None:
            self._hash.verify_and_update(password, self._dummy)
            return False, None
        try:
            return self._hash.verify_and_update(password, stored)
        except Exception:  # an unparseable stored hash must fail closed, not 500
            return False, None
