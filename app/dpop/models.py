from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime


class SeenProof(Base):
    """A DPoP proof's `jti` seen by some replica (RFC 9449 §11.1), kept until no proof carrying
    it could pass the `iat` check any more. Used when no Redis is configured: the database is
    then what every replica shares. Unlogged on PostgreSQL (migration 0014): a crash empties
    it, which costs at most one replay of each proof seen just before."""

    __tablename__ = "dpop_seen_proofs"

    # SHA-256 of the key's thumbprint and the jti: fixed size whatever the client sends, and
    # one key's jti cannot collide with another key's.
    key: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
