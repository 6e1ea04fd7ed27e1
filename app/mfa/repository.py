"""All SQL of second factors and login challenges."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.db import table_of
from app.mfa.models import (
    LoginChallenge,
    PasskeyCeremony,
    PasskeyCredential,
    RecoveryCode,
    TotpFactor,
)

_totp = table_of(TotpFactor)
_codes = table_of(RecoveryCode)
_challenges = table_of(LoginChallenge)


@dataclass(frozen=True, slots=True)
class StoredTotp:
    sealed_secret: str
    confirmed_at: datetime | None
    last_step: int | None
    failures: int = 0
    locked_until: datetime | None = None


async def get_totp(
    conn: AsyncConnection, user_id: uuid.UUID, *, for_update: bool = False
) -> StoredTotp | None:
    t = _totp.c
    stmt = select(t.sealed_secret, t.confirmed_at, t.last_step, t.failures, t.locked_until).where(
        t.user_id == user_id
    )
    if for_update:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    return StoredTotp(*row) if row else None


async def put_pending_totp(
    conn: AsyncConnection, user_id: uuid.UUID, sealed_secret: str, now: datetime
) -> None:
    """A new enrolment in place of any unconfirmed one (the caller checked none is confirmed)."""
    await conn.execute(delete(_totp).where(_totp.c.user_id == user_id))
    await conn.execute(
        insert(_totp).values(user_id=user_id, sealed_secret=sealed_secret, created_at=now)
    )


async def confirm_totp(conn: AsyncConnection, user_id: uuid.UUID, step: int, now: datetime) -> None:
    await conn.execute(
        update(_totp).where(_totp.c.user_id == user_id).values(confirmed_at=now, last_step=step)
    )


async def use_totp_step(conn: AsyncConnection, user_id: uuid.UUID, step: int) -> bool:
    """Record `step` as used; False if it (or a later one) was used already."""
    result = await conn.execute(
        update(_totp)
        .where(
            _totp.c.user_id == user_id,
            _totp.c.confirmed_at.is_not(None),
            (_totp.c.last_step.is_(None)) | (_totp.c.last_step < step),
        )
        .values(last_step=step)
    )
    return bool(result.rowcount)


async def record_factor_failures(
    conn: AsyncConnection, user_id: uuid.UUID, *, failures: int, locked_until: datetime | None
) -> None:
    await conn.execute(
        update(_totp)
        .where(_totp.c.user_id == user_id)
        .values(failures=failures, locked_until=locked_until)
    )


async def delete_factors(conn: AsyncConnection, user_id: uuid.UUID) -> None:
    await conn.execute(delete(_totp).where(_totp.c.user_id == user_id))
    await conn.execute(delete(_codes).where(_codes.c.user_id == user_id))


async def replace_recovery_codes(
    conn: AsyncConnection, user_id: uuid.UUID, code_hashes: Sequence[bytes], now: datetime
) -> None:
    await conn.execute(delete(_codes).where(_codes.c.user_id == user_id))
    await conn.execute(
        insert(_codes),
        [
            {"id": uuid.uuid4(), "user_id": user_id, "code_hash": h, "created_at": now}
            for h in code_hashes
        ],
    )


async def use_recovery_code(
    conn: AsyncConnection, user_id: uuid.UUID, code_hash: bytes, now: datetime
) -> bool:
    """Spend an unused code of the account; False if there is none such."""
    result = await conn.execute(
        update(_codes)
        .where(
            _codes.c.user_id == user_id,
            _codes.c.code_hash == code_hash,
            _codes.c.used_at.is_(None),
        )
        .values(used_at=now)
    )
    return bool(result.rowcount)


async def count_unused_codes(conn: AsyncConnection, user_id: uuid.UUID) -> int:
    stmt = select(func.count()).where(_codes.c.user_id == user_id, _codes.c.used_at.is_(None))
    return int((await conn.execute(stmt)).scalar_one())


@dataclass(frozen=True, slots=True)
class StoredChallenge:
    id: uuid.UUID
    user_id: uuid.UUID
    password_hash: str
    device_name: str | None
    dpop_jkt: str | None
    attempts: int
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None

    def is_answerable_at(self, now: datetime) -> bool:
        """Neither answered, nor ended by wrong codes, nor expired."""
        return self.used_at is None and now < self.expires_at


async def insert_challenge(
    conn: AsyncConnection,
    *,
    token_hash: bytes,
    user_id: uuid.UUID,
    password_hash: str,
    device_name: str | None,
    dpop_jkt: str | None,
    now: datetime,
    expires_at: datetime,
) -> None:
    await conn.execute(
        insert(_challenges).values(
            id=uuid.uuid4(),
            token_hash=token_hash,
            user_id=user_id,
            password_hash=password_hash,
            device_name=device_name,
            dpop_jkt=dpop_jkt,
            attempts=0,
            created_at=now,
            expires_at=expires_at,
        )
    )


async def lock_challenge(conn: AsyncConnection, token_hash: bytes) -> StoredChallenge | None:
    c = _challenges.c
    stmt = (
        select(
            c.id,
            c.user_id,
            c.password_hash,
            c.device_name,
            c.dpop_jkt,
            c.attempts,
            c.created_at,
            c.expires_at,
            c.used_at,
        )
        .where(c.token_hash == token_hash)
        .with_for_update()
    )
    row = (await conn.execute(stmt)).first()
    return StoredChallenge(*row) if row else None


async def record_attempt(
    conn: AsyncConnection, challenge_id: uuid.UUID, *, spent_at: datetime | None
) -> None:
    """One more wrong code; `spent_at` ends the challenge (its last allowed attempt)."""
    await conn.execute(
        update(_challenges)
        .where(_challenges.c.id == challenge_id)
        .values(attempts=_challenges.c.attempts + 1, used_at=spent_at)
    )


async def spend_challenge(conn: AsyncConnection, challenge_id: uuid.UUID, now: datetime) -> None:
    await conn.execute(
        update(_challenges).where(_challenges.c.id == challenge_id).values(used_at=now)
    )


async def delete_expired_challenges(conn: AsyncConnection, now: datetime) -> int:
    result = await conn.execute(delete(_challenges).where(_challenges.c.expires_at < now))
    return int(result.rowcount or 0)


# --- passkeys -------------------------------------------------------------------------------

_passkeys = table_of(PasskeyCredential)
_ceremonies = table_of(PasskeyCeremony)


@dataclass(frozen=True, slots=True)
class StoredPasskey:
    id: uuid.UUID
    user_id: uuid.UUID
    credential_id: bytes
    public_key: bytes
    sign_count: int
    backed_up: bool
    name: str
    created_at: datetime
    last_used_at: datetime | None


_PASSKEY_COLUMNS = (
    _passkeys.c.id,
    _passkeys.c.user_id,
    _passkeys.c.credential_id,
    _passkeys.c.public_key,
    _passkeys.c.sign_count,
    _passkeys.c.backed_up,
    _passkeys.c.name,
    _passkeys.c.created_at,
    _passkeys.c.last_used_at,
)


async def insert_passkey(conn: AsyncConnection, passkey: StoredPasskey) -> None:
    await conn.execute(
        insert(_passkeys).values(
            id=passkey.id,
            user_id=passkey.user_id,
            credential_id=passkey.credential_id,
            public_key=passkey.public_key,
            sign_count=passkey.sign_count,
            backed_up=passkey.backed_up,
            name=passkey.name,
            created_at=passkey.created_at,
        )
    )


async def passkeys_of(conn: AsyncConnection, user_id: uuid.UUID) -> list[StoredPasskey]:
    stmt = (
        select(*_PASSKEY_COLUMNS)
        .where(_passkeys.c.user_id == user_id)
        .order_by(_passkeys.c.created_at, _passkeys.c.id)
    )
    return [StoredPasskey(*row) for row in await conn.execute(stmt)]


async def lock_passkey(conn: AsyncConnection, credential_id: bytes) -> StoredPasskey | None:
    stmt = (
        select(*_PASSKEY_COLUMNS)
        .where(_passkeys.c.credential_id == credential_id)
        .with_for_update()
    )
    row = (await conn.execute(stmt)).first()
    return StoredPasskey(*row) if row else None


async def passkey_used(
    conn: AsyncConnection,
    passkey_id: uuid.UUID,
    *,
    sign_count: int,
    backed_up: bool,
    now: datetime,
) -> None:
    await conn.execute(
        update(_passkeys)
        .where(_passkeys.c.id == passkey_id)
        .values(sign_count=sign_count, backed_up=backed_up, last_used_at=now)
    )


async def rename_passkey(
    conn: AsyncConnection, user_id: uuid.UUID, passkey_id: uuid.UUID, name: str
) -> bool:
    result = await conn.execute(
        update(_passkeys)
        .where(_passkeys.c.id == passkey_id, _passkeys.c.user_id == user_id)
        .values(name=name)
    )
    return bool(result.rowcount)


async def delete_passkey(conn: AsyncConnection, user_id: uuid.UUID, passkey_id: uuid.UUID) -> bool:
    result = await conn.execute(
        delete(_passkeys).where(_passkeys.c.id == passkey_id, _passkeys.c.user_id == user_id)
    )
    return bool(result.rowcount)


async def delete_passkeys(conn: AsyncConnection, user_id: uuid.UUID) -> None:
    await conn.execute(delete(_passkeys).where(_passkeys.c.user_id == user_id))


async def count_passkeys(conn: AsyncConnection, user_id: uuid.UUID) -> int:
    stmt = select(func.count()).where(_passkeys.c.user_id == user_id)
    return int((await conn.execute(stmt)).scalar_one())


@dataclass(frozen=True, slots=True)
class StoredCeremony:
    id: uuid.UUID
    purpose: str
    user_id: uuid.UUID | None
    challenge: bytes
    name: str | None
    expires_at: datetime
    used_at: datetime | None


async def insert_ceremony(
    conn: AsyncConnection,
    *,
    token_hash: bytes,
    purpose: str,
    user_id: uuid.UUID | None,
    challenge: bytes,
    name: str | None,
    now: datetime,
    expires_at: datetime,
) -> None:
    await conn.execute(
        insert(_ceremonies).values(
            id=uuid.uuid4(),
            token_hash=token_hash,
            purpose=purpose,
            user_id=user_id,
            challenge=challenge,
            name=name,
            created_at=now,
            expires_at=expires_at,
        )
    )


async def take_ceremony(
    conn: AsyncConnection, token_hash: bytes, now: datetime
) -> StoredCeremony | None:
    """The ceremony, spent by this call, if it was neither used nor expired."""
    c = _ceremonies.c
    stmt = (
        update(_ceremonies)
        .where(c.token_hash == token_hash, c.used_at.is_(None), c.expires_at > now)
        .values(used_at=now)
        .returning(c.id, c.purpose, c.user_id, c.challenge, c.name, c.expires_at, c.used_at)
    )
    row = (await conn.execute(stmt)).first()
    return StoredCeremony(*row) if row else None


async def delete_expired_ceremonies(conn: AsyncConnection, now: datetime) -> int:
    result = await conn.execute(delete(_ceremonies).where(_ceremonies.c.expires_at < now))
    return int(result.rowcount or 0)
