"""DPoP: sessions bound to a key

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30 22:10:00

`sessions.dpop_jkt`: the RFC 7638 thumbprint of the key a session is bound to (RFC 9449), set
when it starts with a DPoP proof. `authsvc_start_session` gains a trailing `p_dpop_jkt text
DEFAULT NULL` that it stores; `authsvc_rotate_refresh` gains the same parameter and rotates a
bound session only with a proof by its key (outcome 'dpop_mismatch' otherwise, nothing
changed but an audit row). New parameter lists are new functions to PostgreSQL, so the old ones
are dropped first, in Alembic's one transaction; the defaults keep the previous calls working
during a rolling upgrade (an unbound session, as before).
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Pinned copies, read relative to this file and never from app/ (migrations/sql/README.md).
_SQL = Path(__file__).resolve().parent.parent / "sql"

_ROTATE_BEFORE = (
    "uuid, bytea, uuid, bytea, timestamptz, double precision, double precision,"
    " double precision, text, text, timestamptz, boolean, text[]"
)
_START_BEFORE = (
    "uuid, text, timestamptz, uuid, timestamptz, timestamptz, text, text, text, uuid, bytea"
)
_FUNCTIONS = {
    # name: (signature before, signature after, pinned before, pinned after)
    "authsvc_rotate_refresh": (
        _ROTATE_BEFORE,
        _ROTATE_BEFORE + ", text",
        "0010_rotate_refresh.sql",
        "0013_rotate_refresh.sql",
    ),
    "authsvc_start_session": (
        _START_BEFORE,
        _START_BEFORE + ", text",
        "0005_start_session.sql",
        "0013_start_session.sql",
    ),
}


def upgrade() -> None:
    op.add_column("sessions", sa.Column("dpop_jkt", sa.String(length=64), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        for name, (before, _, _, pinned) in _FUNCTIONS.items():
            op.execute(f"DROP FUNCTION IF EXISTS {name}({before})")
            op.execute((_SQL / pinned).read_text(encoding="utf-8"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name, (_, after, pinned, _) in _FUNCTIONS.items():
            op.execute(f"DROP FUNCTION IF EXISTS {name}({after})")
            op.execute((_SQL / pinned).read_text(encoding="utf-8"))
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("dpop_jkt")
