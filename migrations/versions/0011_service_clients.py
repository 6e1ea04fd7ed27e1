"""service clients (RFC 6749 client_credentials)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 21:00:00

`service_clients` holds the services that get their own access tokens at /auth/token with
grant_type=client_credentials, managed with `python -m app clients ...`. Secrets are stored as
SHA-256 hashes only (docs/downstream.md, "Services calling services").
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.core.db

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "service_clients",
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("previous_secret_hash", sa.String(length=64), nullable=True),
        sa.Column(
            "previous_secret_expires_at", app.core.db.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("audiences", sa.Text(), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("created_at", app.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("secret_rotated_at", app.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("disabled_at", app.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", app.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("client_id"),
    )


def downgrade() -> None:
    op.drop_table("service_clients")
