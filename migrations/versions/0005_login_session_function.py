"""start a session after a password check in one round trip (PostgreSQL function)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 23:00:00

After the password hash matched, a login locks the user row, checks that nothing changed
while the hash ran, clears old failures, inserts the session, its first refresh token and the
audit row: five statements, or seven round trips with BEGIN and COMMIT from Python, and most
of the service's own CPU time per login. As one function call it is one round trip and one
implicit transaction. The function only starts sessions: when the user changed, was
deactivated or locked meanwhile it changes nothing and says so, and the service takes its
general path (app/auth/service.py), which records why the login failed.
"""

from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The pinned copy of the function this revision installs, read relative to this file and never
# from app/: a later change to app/sessions/sql/start_session.sql must not change what this
# revision installs. A changed function is a new migration with a new pinned copy.
_FUNCTION_SQL = Path(__file__).resolve().parent.parent / "sql" / "0005_start_session.sql"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_FUNCTION_SQL.read_text(encoding="utf-8"))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS authsvc_start_session("
            "uuid, text, timestamptz, uuid, timestamptz, timestamptz, text, text, text, uuid,"
            " bytea)"
        )
