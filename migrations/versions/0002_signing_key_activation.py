"""signing keys: activation time (publish before signing)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 17:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.core.db

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("activates_at", app.core.db.UTCDateTime(timezone=True)))
    op.execute("UPDATE signing_keys SET activates_at = created_at")
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.alter_column(
            "activates_at", existing_type=app.core.db.UTCDateTime(timezone=True), nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.drop_column("activates_at")
