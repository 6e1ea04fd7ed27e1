from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime


class OutboxMessage(Base):
    """A message another system must receive, written in the transaction that makes it true.

    Its state lives only here: pending while neither `delivered_at` nor `gave_up_at` is set;
    `next_attempt_at` is when a worker may take it next (also the lease of the worker holding
    it), `attempts` how many times one has."""

    __tablename__ = "outbox_messages"
    __table_args__ = (
        # The workers' one question: the pending messages that are due, oldest first.
        Index(
            "ix_outbox_messages_pending_due",
            "next_attempt_at",
            postgresql_where="delivered_at IS NULL AND gave_up_at IS NULL",
            sqlite_where="delivered_at IS NULL AND gave_up_at IS NULL",
        ),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    # Who writes a message twice (a retried transaction) writes it once.
    idempotency_key: Mapped[str] = mapped_column(String(255), nullable=False, unique=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    gave_up_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
