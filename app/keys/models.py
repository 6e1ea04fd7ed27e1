from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime


class SigningKey(Base):
    """A JWT signing key pair, shared by every replica. The private key is encrypted at rest."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16), nullable=False)
    private_key_encrypted: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    public_jwk: Mapped[str] = mapped_column(String(4096), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # Published in JWKS from created_at; signs from activates_at (after the publish delay).
    activates_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # Every token it signed has expired: out of the ring, its job done.
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Withdrawn by an operator (`keys revoke`, a leak): every replica drops it at its next key
    # reload and refuses its tokens. Never signs, verifies or appears in JWKS again.
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
