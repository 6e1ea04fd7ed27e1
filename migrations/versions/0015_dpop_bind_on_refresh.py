"""DPoP: a refresh with a proof binds an unbound session

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 00:20:00

`authsvc_rotate_refresh` (same parameters) now stores the proof's key on a session that had
none when it rotates one of its tokens: RFC 9449 §5 binds a public client's refresh token to
the key it presented, and the session's tokens are what a thief would take next. A refresh
audit row says `dpop_bound` when it happened.
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Pinned copies, read relative to this file and never from app/ (migrations/sql/README.md).
_SQL = Path(__file__).resolve().parent.parent / "sql"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute((_SQL / "0015_rotate_refresh.sql").read_text(encoding="utf-8"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute((_SQL / "0013_rotate_refresh.sql").read_text(encoding="utf-8"))
