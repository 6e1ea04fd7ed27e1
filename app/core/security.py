"""Security primitives: secret derivation, opaque random tokens, and password hashing."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

from app.core.settings import PasswordHashProfile

REFRESH_TOKEN_BYTES = 32  # 256 bits from the OS CSPRNG


def derive_key(secret: str, purpose: str) -> bytes:
    """One independent 256-bit key per purpose, so no key ever serves two roles."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(
        secret.encode()
    )


def b64url(raw: bytes) -> str:
    """Unpadded base64url (RFC 4648 section 5), as tokens and JWTs spell bytes."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def new_opaque_token() -> str:
    return b64url(secrets.token_bytes(REFRESH_TOKEN_BYTES))


# The argon2id costs of new hashes, by PASSWORD_HASH_PROFILE.
_ARGON2 = {
    # OWASP Password Storage Cheat Sheet: argon2id, m=19 MiB, t=2, p=1.
    PasswordHashProfile.owasp: Argon2Hasher(memory_cost=19 * 1024, time_cost=2, parallelism=1),
    # The smallest costs argon2 accepts (8 KiB, one pass): ~1000x cheaper, for test suites only
    # (Settings refuses it in production).
    PasswordHashProfile.test: Argon2Hasher(memory_cost=8, time_cost=1, parallelism=1),
}


_HASHING_NICE_OFFSET = 10
_LOWEST_PRIORITY = 19


def _lower_thread_priority() -> None:
    """Run this (hashing) thread 10 nice levels below the process. Hashes take tens of
    milliseconds of CPU; at the same priority, a burst of logins would take the cores from the
    event loops, and every other request (refresh, verify) would wait behind them. The
    scheduler still gives hashing every cycle nothing else wants, so login throughput is
    unchanged on an idle machine. Relative, not absolute: a process started under `nice`
    (already at 10 or more) keeps hashing below its event loop, and an unprivileged thread
    is never asked to raise its priority (which fails)."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted
        thread = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, hashing_niceness(current))


def hashing_niceness(current: int) -> int:
    """The hashing threads' nice value: 10 below the process's, at most 19 (the lowest)."""
    return min(current + _HASHING_NICE_OFFSET, _LOWEST_PRIORITY)


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

    def __init__(
        self,
        threads: int | None = None,
        profile: PasswordHashProfile = PasswordHashProfile.owasp,
    ) -> None:
        self.profile = profile
        # New hashes use the profile's argon2id costs; a stored hash with other costs (or a
        # bcrypt one) still verifies, and verify_and_update returns its replacement.
        self._hash = PasswordHash((_ARGON2[profile], BcryptHasher()))
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


class TokenHasher:
    """Tokens are stored as HMAC-SHA256 under a key of their purpose's own (derived from
    SECRET_KEY): a copy of the table alone yields no working token, and a token of one
    purpose hashes to nothing of another's."""

    def __init__(self, secret: str, purpose: str) -> None:
        self.purpose = purpose
        self._key = derive_key(secret, f"account-token:{purpose}")

    def new(self) -> tuple[str, bytes]:
        token = new_opaque_token()
        return token, self.hash(token)

    def hash(self, token: str) -> bytes:
        return hmac.new(self._key, token.encode(), hashlib.sha256).digest()
