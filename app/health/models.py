from __future__ import annotations

from sqlalchemy import CheckConstraint, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base


class SchemaCompatibility(Base):
    """One row, written by migrations only: the head revision of the oldest release that still
    works on this schema (expand/contract, docs/deploy.md "Rolling deploys")."""

    __tablename__ = "schema_compatibility"
    __table_args__ = (CheckConstraint("id = 1", name="ck_schema_compatibility_one_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    oldest_code_revision: Mapped[str] = mapped_column(String(32), nullable=False)
