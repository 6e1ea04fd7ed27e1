from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel

from app.sessions.repository import DeviceSession


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

    @classmethod
    def of(cls, device: DeviceSession, current: uuid.UUID | None) -> DeviceSessionOut:
        """`current` marks the session making the request (None: none of them)."""
        return cls(
            id=device.id,
            device_name=device.device_name,
            user_agent=device.user_agent,
            ip=device.ip,
            created_at=device.created_at,
            last_active_at=device.last_seen_at,
            idle_expires_at=device.idle_expires_at,
            absolute_expires_at=device.absolute_expires_at,
            current=device.id == current,
        )
