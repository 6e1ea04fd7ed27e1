from __future__ import annotations

import uuid

from pydantic import BaseModel


class UserOut(BaseModel):
    id: uuid.UUID
    email: str
    role: str
    is_active: bool
