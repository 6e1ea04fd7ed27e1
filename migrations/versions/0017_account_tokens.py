"""Account tokens (password reset, address verification) and users.email_verified_at (issue 21)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 11:40:00

An expand step: a new table and a nullable column the previous release never reads, so
schema_compatibility's oldest release stays 0015. Accounts that exist already count as verified
(they were made by an operator or registered before verification existed).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.core.db

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The column first: on PostgreSQL, once this transaction has created a foreign key to
    # users, ALTER TABLE users is refused ("being used by active queries in this session").
    with op.batch_alter_table("users") as users:
        users.add_column(
            sa.Column("email_verified_at", app.core.db.UTCDateTime(timezone=True), nullable=True)
        )
    op.execute("UPDATE users SET email_verified_at = created_at")
    op.create_table(
        "account_tokens",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column(
            "user_id",
            sa.Uuid(),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("request_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", app.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", app.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("spent_at", app.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("spent_reason", sa.String(32), nullable=True),
        sa.UniqueConstraint("request_id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index(op.f("ix_account_tokens_user_id"), "account_tokens", ["user_id"])


def downgrade() -> None:
    with op.batch_alter_table("users") as users:
        users.drop_column("email_verified_at")
    op.drop_index(op.f("ix_account_tokens_user_id"), table_name="account_tokens")
    op.drop_table("account_tokens")
