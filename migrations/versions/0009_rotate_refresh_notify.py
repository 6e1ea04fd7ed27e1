"""refresh rotation: theft detection tells every replica (PostgreSQL function)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 19:20:00

`authsvc_rotate_refresh` revoking a session on a replayed token (outcome `reused`) also runs
`pg_notify('authsvc_sessions_revoked', <session id>)` in its transaction, as every other
revocation does (app/sessions/push.py): every replica drops the session from its cache when
the revocation commits, never before. Same parameters, so the function is replaced in place;
a replica of the previous version keeps calling it unchanged during a rolling upgrade.
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Pinned copies, read relative to this file and never from app/ (migrations/sql/README.md).
_SQL = Path(__file__).resolve().parent.parent / "sql"
_FUNCTION_SQL = _SQL / "0009_rotate_refresh.sql"
_PREVIOUS_SQL = _SQL / "0007_rotate_refresh.sql"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION_SQL.read_text(encoding="utf-8"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PREVIOUS_SQL.read_text(encoding="utf-8"))
