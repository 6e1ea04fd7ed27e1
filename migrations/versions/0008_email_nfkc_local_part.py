"""users: stored addresses re-normalised with their local part in NFKC (look-alike addresses)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 18:00:00

Login and registration now lower-case, then NFKC-normalise, an address's local part, so that
fullwidth `ｊｏｈｎ@example.com` is `john@example.com` (docs/abuse.md). An account stored
before under a local part that NFKC changes would no longer be found by what its owner types,
so its stored address is rewritten to the new normal form (the same form that login now
computes from what the owner typed before: checked by tests/users/test_lookalike_emails.py).
Only addresses with non-ASCII characters can change.

When the new form is already another account's address (the look-alike pair the change is
about), the row is left as it is and a warning names both accounts: the operator decides
which one is genuine. Until then the left row cannot be logged into.

The normal form is pinned here, as it was at this revision (app.users.service may change
later; a change that moves stored addresses needs a migration of its own). Downgrading leaves
the addresses as they are: the old spelling is not kept, and the plain one still logs in.
"""

import logging
import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from email_validator import EmailNotValidError, validate_email

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")
_users = sa.table("users", sa.column("id", sa.Uuid), sa.column("email", sa.String))


def _normal_form(email: str) -> str:
    """app.users.service.normalize_email at this revision, for a non-ASCII address."""
    email = email.strip()
    local, at, domain = email.translate({0xFF20: "@", 0xFE6B: "@"}).rpartition("@")
    if at:
        email = (unicodedata.normalize("NFKC", local.lower()) + at + domain).strip()
    try:
        address = validate_email(email, check_deliverability=False)
    except EmailNotValidError:
        return email.lower()
    return (address.ascii_email or address.normalized).lower()


def upgrade() -> None:
    conn = op.get_bind()
    # Options on the statement: the connection's own would outlive this migration.
    # Read to the end before writing, a page at a time (keyset, by id): a server-side cursor
    # (yield_per) stayed open to the end of the transaction on PostgreSQL even when closed, and
    # a later migration run in the same transaction could not ALTER users ("being used by
    # active queries in this session"). What this migration changes is as it was.
    candidates = []
    last = None
    while True:
        page = sa.select(_users.c.id, _users.c.email).order_by(_users.c.id).limit(1000)
        if last is not None:
            page = page.where(_users.c.id > last)
        rows = conn.execute(page).all()
        if not rows:
            break
        last = rows[-1][0]
        candidates += [(user_id, email) for user_id, email in rows if not email.isascii()]
    for user_id, email in candidates:
        new = _normal_form(email)
        if new == email:
            continue
        holder = conn.execute(sa.select(_users.c.id).where(_users.c.email == new)).scalar()
        if holder is not None:
            log.warning(
                "user %s keeps its address: its new normal form is user %s's address "
                "(a look-alike pair; see docs/abuse.md)",
                user_id,
                holder,
            )
            continue
        conn.execute(sa.update(_users).where(_users.c.id == user_id).values(email=new))


def downgrade() -> None:
    pass
