"""Passkeys (WebAuthn): credentials, and the ceremonies under way

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-01 18:00:00

An expand step: two new tables the previous release never reads. The oldest release served
stays 0015.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.core.db

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    when = app.core.db.UTCDateTime
    users = sa.ForeignKey("users.id", ondelete="CASCADE")
    op.create_table(
        "passkey_credentials",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.Uuid(), users, nullable=False),
        sa.Column("credential_id", sa.LargeBinary(1023), nullable=False, unique=True),
        sa.Column("public_key", sa.LargeBinary(), nullable=False),
        sa.Column("sign_count", sa.BigInteger(), nullable=False),
        sa.Column("backed_up", sa.Boolean(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("created_at", when(timezone=True), nullable=False),
        sa.Column("last_used_at", when(timezone=True), nullable=True),
    )
    op.create_index(op.f("ix_passkey_credentials_user_id"), "passkey_credentials", ["user_id"])
    op.create_table(
        "passkey_ceremonies",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE")),
        sa.Column("challenge", sa.LargeBinary(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=True),
        sa.Column("created_at", when(timezone=True), nullable=False),
        sa.Column("expires_at", when(timezone=True), nullable=False),
        sa.Column("used_at", when(timezone=True), nullable=True),
    )
    op.create_index(op.f("ix_passkey_ceremonies_user_id"), "passkey_ceremonies", ["user_id"])
    op.create_index(op.f("ix_passkey_ceremonies_expires_at"), "passkey_ceremonies", ["expires_at"])


def downgrade() -> None:
    op.drop_table("passkey_ceremonies")
    op.drop_table("passkey_credentials")
