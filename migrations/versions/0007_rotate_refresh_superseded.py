"""refresh rotation: delayed duplicates are superseded, retries measured from arrival, and the
session's refresh limit checked by the rotation itself (PostgreSQL function)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 16:00:00

`authsvc_rotate_refresh` gains two trailing parameters, both with defaults:

- `p_arrived_at`: the reuse interval is measured from when the request arrived, and a used
  token whose successor was used too, arriving within the interval of its own first use, is
  answered `superseded` (refused, the session kept) instead of revoking the session;
- `p_may_rotate`: whether the session's refresh limit has room; without it an unused token is
  answered `limited` and nothing changes, while retries are answered as ever.

A new parameter list is a new function to PostgreSQL, so the old one is dropped first. The
defaults keep the previous version's call (ten arguments) working during a rolling upgrade,
with the previous rules. See docs/refresh-rotation.md.
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Pinned copies, read relative to this file and never from app/ (migrations/sql/README.md).
_SQL = Path(__file__).resolve().parent.parent / "sql"
_FUNCTION_SQL = _SQL / "0007_rotate_refresh.sql"
_PREVIOUS_SQL = _SQL / "0004_rotate_refresh.sql"

_PREVIOUS_SIGNATURE = (
    "uuid, bytea, uuid, bytea, timestamptz, double precision, double precision,"
    " double precision, text, text"
)
_SIGNATURE = _PREVIOUS_SIGNATURE + ", timestamptz, boolean"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # One transaction (Alembic's): no caller ever finds the function missing.
        op.execute(f"DROP FUNCTION IF EXISTS authsvc_rotate_refresh({_PREVIOUS_SIGNATURE})")
        op.execute(_FUNCTION_SQL.read_text(encoding="utf-8"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS authsvc_rotate_refresh({_SIGNATURE})")
        op.execute(_PREVIOUS_SQL.read_text(encoding="utf-8"))
