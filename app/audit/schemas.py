from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel


class AuditEventOut(BaseModel):
    id: int
    event: str
    user_id: uuid.UUID | None
    session_id: uuid.UUID | None
    ip: str | None
    user_agent: str | None
    details: dict[str, Any]
    created_at: datetime
