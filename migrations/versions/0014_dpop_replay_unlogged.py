"""DPoP: the replay cache table is unlogged on PostgreSQL

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 23:40:00

Every DPoP proof writes one row of `dpop_seen_proofs` when no Redis is configured. Logged, each
write waited for a WAL flush: the replay check cost more than the refresh it guards
(`python -m bench.dpop`). Unlogged, its commits wait for nothing. The price, documented in
docs/dpop.md: after a PostgreSQL crash or a failover the table is empty, so a proof seen in the
last 2 x DPOP_IAT_WINDOW before it could be accepted once more, as with a Redis that restarts.
SQLite has no such tables: nothing to do there.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE dpop_seen_proofs SET UNLOGGED")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE dpop_seen_proofs SET LOGGED")
