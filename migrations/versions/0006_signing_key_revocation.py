"""signing keys: revocation (a leaked key leaves signing, verification and JWKS at once)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 10:00:00

`retired_at` records a key whose tokens have all expired; `revoked_at` records a key an operator
withdrew (`python -m app keys revoke KID`) while its tokens may still be live. Both take the key
out of the ring; only a revocation refuses the tokens it signed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.core.db

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("revoked_at", app.core.db.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.drop_column("revoked_at")
