"""Rolling deploys: the schema says which code it still serves

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01 08:30:00

Migrations follow expand/contract (docs/deploy.md, "Rolling deploys"): a migration that only adds
(a table, a nullable column, a function parameter with a default) keeps the previous release
working, so while a rolling deploy runs, replicas of the previous release stay ready on the newer
schema. A migration that removes or changes what an older release reads (a contract step) sets
`schema_compatibility.oldest_code_revision` to the head of the oldest release that still works on
it; a release whose head is older answers /readyz 503 and refuses to start on that database.
This migration only adds, so code at 0015 still works on it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "schema_compatibility",
        sa.Column("id", sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column("oldest_code_revision", sa.String(32), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_schema_compatibility_one_row"),
    )
    op.bulk_insert(table, [{"id": 1, "oldest_code_revision": "0015"}])


def downgrade() -> None:
    op.drop_table("schema_compatibility")
