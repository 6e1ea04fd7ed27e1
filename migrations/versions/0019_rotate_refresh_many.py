"""Concurrent refreshes share one call and one commit: authsvc_rotate_refresh_many

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-01 16:00:00

An expand step: a new function next to `authsvc_rotate_refresh` (unchanged), which each of its
elements calls; the previous release never calls it, so schema_compatibility's oldest release
stays 0015.
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Pinned copies, read relative to this file and never from app/ (migrations/sql/README.md).
_SQL = Path(__file__).resolve().parent.parent / "sql"
_SIGNATURE = (
    "uuid[], bytea[], uuid[], bytea[], timestamptz[], double precision, double precision,"
    " double precision, text[], text[], timestamptz[], boolean[], text[], text[]"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute((_SQL / "0019_rotate_refresh_many.sql").read_text(encoding="utf-8"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS authsvc_rotate_refresh_many({_SIGNATURE})")
