from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.core.components import provider
from app.recovery.service import PasswordResets

PasswordResetsDep = Annotated[PasswordResets, Depends(provider(PasswordResets))]
