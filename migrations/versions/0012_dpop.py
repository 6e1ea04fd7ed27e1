"""DPoP: the proofs' replay cache

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 21:20:00

`dpop_seen_proofs`: the jti of each proof seen, for as long as it could pass the iat check,
when no Redis is configured (app/dpop/service.py).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.core.db

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dpop_seen_proofs",
        sa.Column("key", sa.LargeBinary(length=32), nullable=False),
        sa.Column("expires_at", app.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index(
        "ix_dpop_seen_proofs_expires_at", "dpop_seen_proofs", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_dpop_seen_proofs_expires_at", table_name="dpop_seen_proofs")
    op.drop_table("dpop_seen_proofs")
