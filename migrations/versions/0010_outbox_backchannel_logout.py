"""the outbox, and theft revocations telling back-channel logout clients

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 20:40:00

`outbox_messages` holds messages to other systems, written in the transaction that makes them
true and delivered by a worker in every replica (app/outbox/). Back-channel logout
(docs/downstream.md) is its first kind.

`authsvc_rotate_refresh` gains a trailing parameter `p_logout_clients text[] DEFAULT NULL`: a
replayed token's revocation also writes one outbox row per client, in its transaction. A new
parameter list is a new function to PostgreSQL, so the old one is dropped first (in Alembic's
one transaction: no caller finds it missing). The default keeps the previous version's call
(twelve arguments) working during a rolling upgrade; it tells no one.
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

import app.core.db

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Pinned copies, read relative to this file and never from app/ (migrations/sql/README.md).
_SQL = Path(__file__).resolve().parent.parent / "sql"
_FUNCTION_SQL = _SQL / "0010_rotate_refresh.sql"
_PREVIOUS_SQL = _SQL / "0009_rotate_refresh.sql"

_PREVIOUS_SIGNATURE = (
    "uuid, bytea, uuid, bytea, timestamptz, double precision, double precision,"
    " double precision, text, text, timestamptz, boolean"
)
_SIGNATURE = _PREVIOUS_SIGNATURE + ", text[]"
_PENDING = "delivered_at IS NULL AND gave_up_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "outbox_messages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", app.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", app.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", app.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("gave_up_at", app.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_messages_pending_due",
            ["next_attempt_at"],
            unique=False,
            postgresql_where=sa.text(_PENDING),
            sqlite_where=sa.text(_PENDING),
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS authsvc_rotate_refresh({_PREVIOUS_SIGNATURE})")
        op.execute(_FUNCTION_SQL.read_text(encoding="utf-8"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS authsvc_rotate_refresh({_SIGNATURE})")
        op.execute(_PREVIOUS_SQL.read_text(encoding="utf-8"))
    with op.batch_alter_table("outbox_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_messages_pending_due")
    op.drop_table("outbox_messages")
