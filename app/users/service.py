"""Users: email and password rules, creation, lookups, password storage. Used by the CLI and
the API; what also touches sessions (deactivation, password changes) is app.account.service."""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from email_validator import EmailNotValidError, validate_email
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.audit.service import record
from app.core.client import ClientInfo
from app.core.security import PasswordHasher
from app.core.settings import Settings
from app.users import repository
from app.users.errors import EmailTaken, InvalidEmail, InvalidPassword, InvalidRole, UserNotFound
from app.users.lookalikes import mixes_scripts

PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 1024


# A plain ASCII address (dot-atoms, no A-label) has no spelling to normalise but its case, and
# the validator's result is its lower case whether it accepts it or not; skipping the validator
# there saves a few percent of a login's CPU time outside the hash (docs/performance.md).
_PLAIN_ASCII = re.compile(
    r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*"  # local part
    r"@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"  # domain
)


def normalize_email(email: str) -> str:
    """One spelling per mailbox: trimmed, lower-cased, the local part in NFKC (fullwidth
    `ｊｏｈｎ` is `john`) and the domain IDNA-encoded (`Ex@BÜCHER.example` and
    `ex@xn--bcher-kva.example` are the same account). Login and registration both use it."""
    email = email.strip()
    lowered = email.lower()
    if _PLAIN_ASCII.fullmatch(email) and "xn--" not in lowered:
        return lowered
    return _normalize_with_validator(email)


_COMPATIBILITY_AT_SIGNS = str.maketrans({"\uff20": "@", "\ufe6b": "@"})


def _compatibility_form(email: str) -> str:
    """The address with its local part lower-cased, then NFKC-normalised: fullwidth and other
    compatibility characters become the plain ones they stand for. The domain is left to the
    validator, whose IDNA (UTS #46) mapping does the same there. Lower case first: for a few
    characters (Greek sigma symbols) NFKC and lower case do not commute, and this order keeps
    the normal form of an already stored address equal to that of what its owner typed."""
    # The fullwidth and small at-signs are "@" in NFKC: find the parts as NFKC would.
    local, at, domain = email.translate(_COMPATIBILITY_AT_SIGNS).rpartition("@")
    if not at:
        return email
    # NFKC can turn a spacing accent into a space and a combining mark: trim again.
    return (unicodedata.normalize("NFKC", local.lower()) + at + domain).strip()


def _normalize_with_validator(email: str) -> str:
    email = _compatibility_form(email)
    try:
        address = validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return email.lower()  # cannot match a stored address; login just fails
    return (address.ascii_email or address.normalized).lower()


def check_email(email: str) -> str:
    """An address a new account may have, normalised. Refuses what is no address, and
    look-alikes: a local part or a domain label that mixes scripts (docs/abuse.md)."""
    try:
        address = validate_email(_compatibility_form(email.strip()), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidEmail() from exc
    if mixes_scripts(address.local_part) or any(
        mixes_scripts(label) for label in address.domain.split(".")
    ):
        raise InvalidEmail(
            "This address mixes letters of different scripts (such as Latin and Cyrillic), "
            "as look-alike addresses do."
        )
    return normalize_email(email)


# White space, and the invisible: format characters (zero-width spaces and joiners) and controls.
_BLANK_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cf", "Cc"})


def check_password_policy(password: str, *, email: str) -> None:
    """A new password: 8..1024 characters, not blank, not the account's email address. The
    password itself is never altered (no trimming, no normalisation): what the user typed is
    what is hashed."""
    if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH:
        raise InvalidPassword()
    if all(c.isspace() or unicodedata.category(c) in _BLANK_CATEGORIES for c in password):
        raise InvalidPassword(
            "A password must not be blank: white space or invisible characters alone are refused."
        )
    guess = password.strip().lower()
    local_part = email.rpartition("@")[0]
    if guess in (email.lower(), local_part.lower()):
        raise InvalidPassword("A password must not be the account's email address.")


async def hash_new_password(hasher: PasswordHasher, password: str, *, email: str) -> str:
    """Policy check, then argon2id in a worker thread (call before taking a connection)."""
    check_password_policy(password, email=email)
    return await hasher.hash(password)


def check_role(role: str, roles: frozenset[str]) -> str:
    if role not in roles:
        raise InvalidRole(f"No such role: the roles are {', '.join(sorted(roles))} (ROLES).")
    return role


@dataclass(frozen=True, slots=True)
class UserPage:
    users: list[repository.UserRecord]
    next_after: str | None  # pass as `after` for the next page; None: this was the last


async def find_users(
    conn: AsyncConnection, *, email_contains: str | None, after: str | None, limit: int
) -> UserPage:
    """A page of users by email, optionally those whose address contains a text."""
    found = await repository.list_users(
        conn, email_contains=email_contains, after=after, limit=limit + 1
    )
    page = found[:limit]
    return UserPage(page, page[-1].email if len(found) > limit else None)


async def insert_new_user(
    conn: AsyncConnection,
    *,
    email: str,
    password_hash: str,
    now: datetime,
    role: str = "user",
    verified: bool = True,
) -> uuid.UUID:
    """`verified`: the address counts as proven (an operator's account); a registration's
    is not until its owner follows the emailed link."""
    email = check_email(email)
    if await repository.get_by_email(conn, email) is not None:
        raise EmailTaken()
    try:
        return await repository.insert_user(
            conn, email=email, password_hash=password_hash, role=role, now=now, verified=verified
        )
    except IntegrityError as exc:  # a concurrent create of the same email
        raise EmailTaken() from exc


async def require_by_email(conn: AsyncConnection, email: str) -> repository.UserRecord:
    user = await repository.get_by_email(conn, normalize_email(email))
    if user is None:
        raise UserNotFound()
    return user


async def require_by_id(conn: AsyncConnection, user_id: uuid.UUID) -> repository.UserRecord:
    user = await repository.get_by_id(conn, user_id)
    if user is None:
        raise UserNotFound()
    return user


async def leaves_an_active_admin(conn: AsyncConnection, user: repository.UserRecord) -> bool:
    """Whether an active admin remains once `user` is deactivated. Locks the active admins'
    rows for the rest of the transaction: of two admins deactivating each other at once, the
    second waits for the first and then sees it was the last."""
    if user.role != "admin":
        return True
    admins = await repository.lock_active_admins(conn)
    return user.id not in admins or len(admins) > 1


async def has_active_admin(conn: AsyncConnection) -> bool:
    return await repository.count_active_admins(conn) > 0


async def replace_password_hash(
    conn: AsyncConnection, user_id: uuid.UUID, password_hash: str, *, now: datetime
) -> None:
    """Store a new hash; earlier failures no longer count. (Revoking the sessions the old
    password opened is the caller's part: see app.account.service.)"""
    await repository.set_password_hash(conn, user_id, password_hash, now=now)
    await repository.reset_login_failures(conn, user_id)


@dataclass(frozen=True, slots=True)
class Lockout:
    """After `threshold` consecutive wrong passwords the account is locked for `base_seconds`,
    doubling with each further failure up to `max_seconds`."""

    threshold: int
    base_seconds: int
    max_seconds: int

    @classmethod
    def of(cls, settings: Settings) -> Lockout:
        return cls(
            threshold=settings.lockout_threshold,
            base_seconds=settings.lockout_base_seconds,
            max_seconds=settings.lockout_max_seconds,
        )

    def seconds_after(self, failures: int) -> int | None:
        if failures < self.threshold:
            return None
        doublings = min(failures - self.threshold, 20)
        seconds: int = min(self.base_seconds * 2**doublings, self.max_seconds)
        return seconds

    async def count_failure(
        self,
        conn: AsyncConnection,
        client: ClientInfo,
        user: repository.UserRecord,
        now: datetime,
    ) -> None:
        """One more wrong password for the account (`user` read under its row lock), from
        any path that checks one (login, password change). Locks after the threshold, for a
        time that doubles with each further failure up to a cap: a guesser is slowed
        exponentially, whatever IPs or sessions it uses."""
        failed = user.failed_logins + 1
        seconds = self.seconds_after(failed)
        locked_until = None if seconds is None else now + timedelta(seconds=seconds)
        if seconds is not None:
            await record(
                conn,
                "account.locked",
                now=now,
                client=client,
                user_id=user.id,
                failures=failed,
                seconds=seconds,
            )
        await repository.record_login_failure(
            conn, user.id, failed_logins=failed, locked_until=locked_until
        )


async def mark_email_verified(conn: AsyncConnection, user_id: uuid.UUID, *, now: datetime) -> None:
    await repository.mark_email_verified(conn, user_id, now=now)
