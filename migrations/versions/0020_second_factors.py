"""Second factors: TOTP, recovery codes, two-step login challenges, and the session's
authentication context (amr, auth_time, the last second factor)

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-01 17:00:00

An expand step: new tables and nullable columns (a session without `amr` is a password
session; `auth_time` falls back to `created_at`), `users.mfa_enabled` defaulting to false, and
the rotation functions return three more columns, which the previous release does not read
(it reads columns by name). `authsvc_start_session` refuses an account with a second factor, so
that the one-round-trip login never starts a password-only session for it. Until every replica
runs this release, one of the previous release would still log such an account in with its
password alone: enable second factors after the rolling deploy (docs/mfa.md). The oldest release
served stays 0015.
"""

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

import app.core.db

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Pinned copies, read relative to this file and never from app/ (migrations/sql/README.md).
_SQL = Path(__file__).resolve().parent.parent / "sql"
_ROTATE = (
    "uuid, bytea, uuid, bytea, timestamptz, double precision, double precision,"
    " double precision, text, text, timestamptz, boolean, text[], text"
)
_ROTATE_MANY = (
    "uuid[], bytea[], uuid[], bytea[], timestamptz[], double precision, double precision,"
    " double precision, text[], text[], timestamptz[], boolean[], text[], text[]"
)


def upgrade() -> None:
    op.add_column(
        "users",
        sa.Column("mfa_enabled", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("amr", sa.String(64), nullable=True))
        batch.add_column(
            sa.Column("auth_time", app.core.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(
            sa.Column("factor_at", app.core.db.UTCDateTime(timezone=True), nullable=True)
        )
    _create_tables()
    if op.get_bind().dialect.name == "postgresql":
        # The return type changes: dropped and made again, in this one transaction.
        op.execute(f"DROP FUNCTION IF EXISTS authsvc_rotate_refresh_many({_ROTATE_MANY})")
        op.execute(f"DROP FUNCTION IF EXISTS authsvc_rotate_refresh({_ROTATE})")
        for pinned in ("0020_rotate_refresh.sql", "0020_rotate_refresh_many.sql"):
            op.execute((_SQL / pinned).read_text(encoding="utf-8"))
        op.execute((_SQL / "0020_start_session.sql").read_text(encoding="utf-8"))


def _create_tables() -> None:
    when = app.core.db.UTCDateTime
    op.create_table(
        "totp_factors",
        sa.Column(
            "user_id", sa.Uuid(), sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("sealed_secret", sa.Text(), nullable=False),
        sa.Column("created_at", when(timezone=True), nullable=False),
        sa.Column("confirmed_at", when(timezone=True), nullable=True),
        sa.Column("last_step", sa.BigInteger(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("locked_until", when(timezone=True), nullable=True),
    )
    op.create_table(
        "recovery_codes",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "user_id",
            sa.Uuid(),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("code_hash", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column("created_at", when(timezone=True), nullable=False),
        sa.Column("used_at", when(timezone=True), nullable=True),
    )
    op.create_table(
        "login_challenges",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False, unique=True),
        sa.Column(
            "user_id",
            sa.Uuid(),
            sa.ForeignKey("users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("device_name", sa.String(100), nullable=True),
        sa.Column("dpop_jkt", sa.String(64), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", when(timezone=True), nullable=False),
        sa.Column("expires_at", when(timezone=True), nullable=False),
        sa.Column("used_at", when(timezone=True), nullable=True),
    )
    op.create_index(op.f("ix_recovery_codes_user_id"), "recovery_codes", ["user_id"])
    op.create_index(op.f("ix_login_challenges_user_id"), "login_challenges", ["user_id"])
    op.create_index(op.f("ix_login_challenges_expires_at"), "login_challenges", ["expires_at"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION IF EXISTS authsvc_rotate_refresh_many({_ROTATE_MANY})")
        op.execute(f"DROP FUNCTION IF EXISTS authsvc_rotate_refresh({_ROTATE})")
        for pinned in ("0015_rotate_refresh.sql", "0019_rotate_refresh_many.sql"):
            op.execute((_SQL / pinned).read_text(encoding="utf-8"))
        op.execute((_SQL / "0013_start_session.sql").read_text(encoding="utf-8"))
    op.drop_table("login_challenges")
    op.drop_table("recovery_codes")
    op.drop_table("totp_factors")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("factor_at")
        batch.drop_column("auth_time")
        batch.drop_column("amr")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("mfa_enabled")
