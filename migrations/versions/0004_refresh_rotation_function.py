"""refresh rotation in one round trip (PostgreSQL function)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 18:40:00

A refresh rotation locks the session, reads the token and its successor, claims the token,
inserts the successor, slides the idle deadline and writes the audit row: seven statements, or
seven round trips plus BEGIN and COMMIT from Python. As one function call it is one round trip
and one implicit transaction. The rules are the same as the portable session store's
(app/sessions/store/portable.py, used on SQLite); tests/sessions/test_store_rules.py runs every rule
through both. See
docs/refresh-rotation.md.
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The pinned copy of the function this revision installs, read relative to this file and never
# from app/: a later change to app/sessions/sql/rotate_refresh.sql must not change what this
# revision installs. A changed function is a new migration with a new pinned copy.
_FUNCTION_SQL = Path(__file__).resolve().parent.parent / "sql" / "0004_rotate_refresh.sql"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION_SQL.read_text(encoding="utf-8"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS authsvc_rotate_refresh("
            "uuid, bytea, uuid, bytea, timestamptz, double precision, double precision,"
            " double precision, text, text)"
        )
