from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel


class DeviceSessionOut(BaseModel):
    id: uuid.UUID
    device_name: str | None
    user_agent: str | None
    ip: str | None
    created_at: datetime
    last_active_at: datetime
    idle_expires_at: datetime
    absolute_expires_at: datetime
    current: bool
