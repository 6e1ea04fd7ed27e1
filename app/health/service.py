"""Whether this release can serve the database's schema (expand/contract, docs/deploy.md)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from app.health import repository


class SchemaState(enum.StrEnum):
    CURRENT = "current"  # at this release's head
    NEWER = "newer"  # migrated by a newer release that still serves this one
    PENDING = "pending"  # behind this release's head (or empty): migrate first
    INCOMPATIBLE = "incompatible"  # a newer release contracted what this one reads

    @property
    def serves(self) -> bool:
        return self in (SchemaState.CURRENT, SchemaState.NEWER)


@dataclass(frozen=True, slots=True)
class SchemaCheck:
    state: SchemaState
    database: frozenset[str]
    code: frozenset[str]
    oldest_code_revision: str | None = None


async def check_schema(conn: AsyncConnection) -> SchemaCheck:
    """One read in the common case (the database at this release's head); a newer schema is
    also asked which releases it still serves."""
    code = repository.expected_revisions()
    database = await repository.database_revisions(conn)
    if database == code:
        return SchemaCheck(SchemaState.CURRENT, database, code)
    if database <= repository.known_revisions():  # empty, or an ancestor of this head
        return SchemaCheck(SchemaState.PENDING, database, code)
    oldest = await repository.oldest_code_revision(conn)
    # Revisions are one line: a release knows every revision up to its head, so it is at or
    # after `oldest` exactly when it knows it.
    serves = oldest is not None and oldest in repository.known_revisions()
    state = SchemaState.NEWER if serves else SchemaState.INCOMPATIBLE
    return SchemaCheck(state, database, code, oldest)
