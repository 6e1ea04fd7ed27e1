"""The key ring: signing keys loaded once per process, created on first start."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidTag
from sqlalchemy.ext.asyncio import AsyncEngine

from app.keys import repository
from app.keys.crypto import (
    KeyEncryptor,
    PrivateKey,
    PublicKey,
    dumps_jwk,
    generate_private_key,
    public_jwk,
    thumbprint_kid,
)

logger = logging.getLogger("app.keys")


@dataclass(frozen=True, slots=True)
class VerificationKey:
    kid: str
    algorithm: str
    public_key: PublicKey
    jwk: dict[str, object]


@dataclass(frozen=True, slots=True)
class SigningKeyPair:
    kid: str
    algorithm: str
    private_key: PrivateKey


class KeyRingError(RuntimeError):
    """The stored keys cannot be used with this configuration."""


class KeyRing:
    def __init__(self, signer: SigningKeyPair, verifiers: dict[str, VerificationKey]) -> None:
        self.signer = signer
        self.verifiers = verifiers

    def jwks(self) -> dict[str, list[dict[str, object]]]:
        return {"keys": [key.jwk for key in self.verifiers.values()]}


async def ensure_signing_key(
    engine: AsyncEngine, *, algorithm: str, secret: str, now: datetime
) -> None:
    """Create a key for `algorithm` unless a live one exists.

    Replicas starting together on an empty database must end up with one key, or each would
    sign with its own and refuse the others' tokens: the check and the insert run in one
    transaction under a lock (an advisory lock on PostgreSQL; SQLite serialises writers).
    """
    async with engine.begin() as conn:
        await repository.lock_key_creation(conn)
        if any(k.algorithm == algorithm for k in await repository.list_live_keys(conn)):
            return
        private_key = generate_private_key(algorithm)
        kid = thumbprint_kid(private_key.public_key())
        await repository.insert_key(
            conn,
            repository.StoredKey(
                kid=kid,
                algorithm=algorithm,
                private_key_encrypted=KeyEncryptor(secret).encrypt(private_key, kid),
                public_jwk=dumps_jwk(
                    public_jwk(private_key.public_key(), kid=kid, algorithm=algorithm)
                ),
                created_at=now,
            ),
        )
    logger.info("keys.created", extra={"kid": kid, "algorithm": algorithm})


async def load_key_ring(engine: AsyncEngine, *, algorithm: str, secret: str) -> KeyRing:
    async with engine.connect() as conn:
        stored = await repository.list_live_keys(conn)
    encryptor = KeyEncryptor(secret)
    verifiers: dict[str, VerificationKey] = {}
    signer: SigningKeyPair | None = None
    for key in stored:
        try:
            private_key = encryptor.decrypt(key.private_key_encrypted, key.kid)
        except InvalidTag as exc:
            raise KeyRingError(
                f"SECRET_KEY cannot decrypt signing key {key.kid}: it was created with another "
                "SECRET_KEY (restore it, or retire the key)"
            ) from exc
        verifiers[key.kid] = VerificationKey(
            kid=key.kid,
            algorithm=key.algorithm,
            public_key=private_key.public_key(),
            jwk=json.loads(key.public_jwk),
        )
        # Oldest live key of the configured algorithm: every replica picks the same one.
        if signer is None and key.algorithm == algorithm:
            signer = SigningKeyPair(kid=key.kid, algorithm=key.algorithm, private_key=private_key)
    if signer is None:
        raise KeyRingError(f"no live signing key for {algorithm}; run `python -m app migrate`")
    return KeyRing(signer, verifiers)
