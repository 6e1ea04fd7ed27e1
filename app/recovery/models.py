from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, LargeBinary, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime


class AccountToken(Base):
    """A single-use token emailed to an account's owner (a password reset, an address
    verification), by its hash: HMAC-SHA256 under a key derived from SECRET_KEY for its
    purpose, so a token of one purpose is no token of another. The token itself is only in
    the email. Usable while `spent_at` is unset and before `expires_at`; a reset token only
    if the password has not changed since `created_at`."""

    __tablename__ = "account_tokens"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    purpose: Mapped[str] = mapped_column(
        String(32), nullable=False
    )  # password_reset | verify_email
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    # The request this token answers: a request processed twice (a worker that crashed after
    # its commit) issues one token and one email.
    request_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False, unique=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False, unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    # Failed confirmations (a new password the policy refused): bounded.
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    spent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # used | superseded (a newer request) | too_many_attempts
    spent_reason: Mapped[str | None] = mapped_column(String(32))


class PendingRegistration(Base):
    """A registration waiting for its address to be proven (REQUIRE_VERIFIED_EMAIL): the
    account is made only when the emailed link is followed with the password the
    registration chose, so until then no account exists for the address (a login answers as
    for any unknown one), and a link sent to someone who did not register it is of no use to
    the one who did. The password's hash lies sealed (Fernet, a key derived from SECRET_KEY);
    the row is deleted when its account is made, after too many wrong passwords, or expired."""

    __tablename__ = "pending_registrations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), nullable=False, index=True)
    # The registration request: processed twice, it writes one row and one email.
    request_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False, unique=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False, unique=True)
    sealed_password_hash: Mapped[str] = mapped_column(Text, nullable=False)
    # Wrong passwords sent with the link: bounded.
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
