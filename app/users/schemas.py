from __future__ import annotations

import uuid

from pydantic import BaseModel, Field

from app.users.repository import UserRecord


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    role: str
    is_active: bool

    @classmethod
    def of(cls, user: UserRecord) -> UserOut:
        return cls(id=user.id, email=user.email, role=user.role, is_active=user.is_active)


class UserPageOut(BaseModel):
    users: list[UserOut]
    next_after: str | None = Field(
        description="Pass as `after` for the next page; null when this page is the last."
    )
