"""The key ring: signing keys shared by every replica through the database.

A key's life: **pending** (published in JWKS, not yet signing) from its creation until
`activates_at`; **active** (the newest activated key signs); **retiring** (superseded, still
published and accepted until every token it signed has expired); then **retired**. The publish
delay is at least the JWKS cache max-age plus the ring's reload interval, so every gateway and
every replica knows a key before the first token signed with it exists.

A key can also be **revoked** in any state (`revoke`, for a leak): it leaves every replica's ring
at its next reload, and the tokens it signed are refused from then on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidTag
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.audit import service as audit
from app.core.client import ClientInfo
from app.keys import repository
from app.keys.crypto import (
    KeyEncryptor,
    PrivateKey,
    PublicKey,
    algorithm_of,
    dumps_jwk,
    generate_private_key,
    load_private_pem,
    load_public_pem,
    public_jwk,
    thumbprint_kid,
)
from app.keys.errors import KeyNotFound
from app.keys.repository import StoredKey

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


@dataclass(frozen=True, slots=True)
class KeyStatus:
    key: StoredKey
    state: str  # pending | active | retiring | retired
    retires_at: datetime | None


@dataclass(frozen=True, slots=True)
class Revocation:
    kid: str
    revoked_at: datetime
    newly_revoked: bool  # False: it had been revoked before, at revoked_at
    # The fresh key that signs from now on when the revoked key was the signer, else None.
    replacement: StoredKey | None


class KeyRingError(RuntimeError):
    """The stored keys cannot be used with this configuration."""


class KeyRing:
    def __init__(self, signer: SigningKeyPair, verifiers: dict[str, VerificationKey]) -> None:
        self.signer = signer
        self.verifiers = verifiers

    def jwks(self) -> dict[str, list[dict[str, object]]]:
        return {"keys": [key.jwk for key in self.verifiers.values()]}


class KeySet:
    """The key ring this process uses now; `use` swaps in a reloaded ring as keys rotate.
    Signers and verifiers read `ring` on every use, so a swap takes effect at once."""

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring

    def use(self, ring: KeyRing) -> None:
        self.ring = ring


def key_statuses(
    keys: list[StoredKey], now: datetime, token_lifetime: timedelta
) -> list[KeyStatus]:
    """Each live key's state at `now`; `keys` ordered by activation.

    The signer is the newest activated key or, while none has activated (a replica whose clock
    trails the one that created the first key), the earliest: never no signer at all."""
    activated = [k for k in keys if k.activates_at <= now] or keys[:1]
    statuses = []
    for key in keys:
        if key is activated[-1]:
            statuses.append(KeyStatus(key, "active", None))
        elif key not in activated:
            statuses.append(KeyStatus(key, "pending", None))
        else:
            successor = activated[activated.index(key) + 1]
            retires_at = successor.activates_at + token_lifetime
            statuses.append(
                KeyStatus(key, "retiring" if now < retires_at else "retired", retires_at)
            )
    return statuses


def _new_key(algorithm: str, secret: str, *, now: datetime, activates_at: datetime) -> StoredKey:
    private_key = generate_private_key(algorithm)
    kid = thumbprint_kid(private_key.public_key())
    return StoredKey(
        kid=kid,
        algorithm=algorithm,
        private_key_encrypted=KeyEncryptor(secret).encrypt(private_key, kid),
        public_jwk=dumps_jwk(public_jwk(private_key.public_key(), kid=kid, algorithm=algorithm)),
        created_at=now,
        activates_at=activates_at,
    )


async def ensure_signing_key(
    engine: AsyncEngine, *, algorithm: str, secret: str, now: datetime
) -> None:
    """Create an immediately active key for `algorithm` unless a live one exists.

    Replicas starting together on an empty database must end up with one key, or each would
    sign with its own and refuse the others' tokens: the check and the insert run in one
    transaction under a lock (an advisory lock on PostgreSQL; SQLite serialises writers).
    """
    async with engine.begin() as conn:
        await repository.lock_key_creation(conn)
        if any(k.algorithm == algorithm for k in await repository.list_live_keys(conn)):
            return
        key = _new_key(algorithm, secret, now=now, activates_at=now)
        await repository.insert_key(conn, key)
    logger.info("keys.created", extra={"kid": key.kid, "algorithm": algorithm})


async def rotate(
    engine: AsyncEngine,
    *,
    algorithm: str,
    secret: str,
    now: datetime,
    publish_delay: timedelta,
    token_lifetime: timedelta,
) -> StoredKey:
    """Publish a new key now; it starts signing after `publish_delay`. Retires keys whose
    tokens have all expired."""
    async with engine.begin() as conn:
        await repository.lock_key_creation(conn)
        key = _new_key(algorithm, secret, now=now, activates_at=now + publish_delay)
        await repository.insert_key(conn, key)
        await _retire_expired(conn, now, token_lifetime)
    logger.info("keys.rotated", extra={"kid": key.kid, "activates_at": key.activates_at})
    return key


async def revoke(
    engine: AsyncEngine,
    kid: str,
    *,
    algorithm: str,
    secret: str,
    now: datetime,
    token_lifetime: timedelta,
) -> Revocation:
    """Withdraw a key (it leaked): it never signs, verifies or appears in JWKS again, on every
    replica from its next key reload. When it was the signer, a fresh key signs from `now`,
    without the publish delay: gateways that cached JWKS do not know it yet (they must refetch),
    but a leaked key must not sign one more token. Revoking twice changes nothing."""
    async with engine.begin() as conn:
        await repository.lock_key_creation(conn)
        found = await repository.find_revocation(conn, kid)
        if found is None:
            raise KeyNotFound()
        if found.revoked_at is not None:
            return Revocation(kid, found.revoked_at, newly_revoked=False, replacement=None)
        # Retire what has expired first: with the revoked key gone, a key it had superseded long
        # ago would count as superseded by the replacement only, and verify again.
        await _retire_expired(conn, now, token_lifetime)
        statuses = key_statuses(await repository.list_live_keys(conn), now, token_lifetime)
        signing = any(s.key.kid == kid and s.state == "active" for s in statuses)
        await repository.revoke(conn, kid, now=now)
        replacement = None
        if signing:
            replacement = _new_key(algorithm, secret, now=now, activates_at=now)
            await repository.insert_key(conn, replacement)
        await audit.record(
            conn,
            "keys.revoked",
            now=now,
            client=ClientInfo(),
            kid=kid,
            replaced_by=replacement.kid if replacement else None,
        )
    return Revocation(kid, now, newly_revoked=True, replacement=replacement)


async def list_keys(
    engine: AsyncEngine, *, now: datetime, token_lifetime: timedelta
) -> list[KeyStatus]:
    async with engine.begin() as conn:
        await _retire_expired(conn, now, token_lifetime)
        keys = await repository.list_live_keys(conn)
    return key_statuses(keys, now, token_lifetime)


async def _retire_expired(conn: AsyncConnection, now: datetime, lifetime: timedelta) -> None:
    statuses = key_statuses(await repository.list_live_keys(conn), now, lifetime)
    await repository.retire(conn, [s.key.kid for s in statuses if s.state == "retired"], now=now)


async def load_key_ring(
    engine: AsyncEngine, *, secret: str, now: datetime, token_lifetime: timedelta
) -> KeyRing:
    async with engine.connect() as conn:
        stored = await repository.list_live_keys(conn)
    encryptor = KeyEncryptor(secret)
    verifiers: dict[str, VerificationKey] = {}
    signer: SigningKeyPair | None = None
    for status in key_statuses(stored, now, token_lifetime):
        if status.state == "retired":
            continue
        key = status.key
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
        if status.state == "active":
            signer = SigningKeyPair(kid=key.kid, algorithm=key.algorithm, private_key=private_key)
    if signer is None:
        raise KeyRingError("no active signing key; run `python -m app migrate`")
    return KeyRing(signer, verifiers)


def load_file_key_ring(private_key_file: str, public_key_files: list[str]) -> KeyRing:
    """Keys managed outside the service (a secret store mounting PEM files): the private key
    signs; the extra public keys keep verifying tokens of keys being rotated out. Re-read on
    every reload, so replacing the files rotates without a restart."""
    private_key = load_private_pem(Path(private_key_file).read_bytes())
    signer_kid = thumbprint_kid(private_key.public_key())
    algorithm = algorithm_of(private_key.public_key())
    signer = SigningKeyPair(kid=signer_kid, algorithm=algorithm, private_key=private_key)
    verifiers: dict[str, VerificationKey] = {}
    public_keys = [private_key.public_key()]
    public_keys += [load_public_pem(Path(path).read_bytes()) for path in public_key_files]
    for public_key in public_keys:
        kid = thumbprint_kid(public_key)
        alg = algorithm_of(public_key)
        verifiers[kid] = VerificationKey(
            kid=kid,
            algorithm=alg,
            public_key=public_key,
            jwk=public_jwk(public_key, kid=kid, algorithm=alg),
        )
    return KeyRing(signer, verifiers)
