"""Security primitives: secret derivation, opaque tokens, their hashes, and password hashing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from pwdlib.hashers.bcrypt import BcryptHasher

REFRESH_TOKEN_BYTES = 32  # 256 bits from the OS CSPRNG


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
    """Hashes refresh tokens for storage and derives each token's one successor.

    The successor is HMAC(successor_key, token): any replica can recompute it, so a retried or
    concurrent refresh of the same token answers with the same successor without storing it.
    """

    def __init__(self, secret: str) -> None:
        self._hash_key = derive_key(secret, "refresh-token-hash/v1")
        self._successor_key = derive_key(secret, "refresh-token-successor/v1")

    def new_token(self) -> str:
        return new_opaque_token()

    def hash(self, token: str) -> bytes:
        return hmac.new(self._hash_key, token.encode(), hashlib.sha256).digest()

    def successor(self, token: str) -> str:
        return _b64(hmac.new(self._successor_key, token.encode(), hashlib.sha256).digest())


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


class PasswordHasher:
    """argon2id for new hashes; bcrypt still verified (and upgraded on the next login)."""

    def __init__(self) -> None:
        self._hash = PasswordHash((_ARGON2, BcryptHasher()))
        # Verifying against this when the user does not exist keeps both paths equally slow.
        self._dummy = self._hash.hash(new_opaque_token())

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hash.hash, password)

    async def verify_and_update(self, password: str, stored: str | None) -> tuple[bool, str | None]:
        return await asyncio.to_thread(self._verify_sync, password, stored)

    def _verify_sync(self, password: str, stored: str | None) -> tuple[bool, str | None]:
        if stored is None:
            self._hash.verify_and_update(password, self._dummy)
            return False, None
        try:
            return self._hash.verify_and_update(password, stored)
        except Exception:  # an unparseable stored hash must fail closed, not 500
            return False, None
