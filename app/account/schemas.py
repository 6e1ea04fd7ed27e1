from __future__ import annotations

from pydantic import Field

from app.core.json_body import RequestBody
from app.users.service import PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH


class ChangePasswordRequest(RequestBody):
    current_password: str = Field(min_length=1, max_length=PASSWORD_MAX_LENGTH)
    new_password: str = Field(min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH)
