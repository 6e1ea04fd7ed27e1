from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.core.components import provider
from app.sessions.service import SessionService

SessionServiceDep = Annotated[SessionService, Depends(provider(SessionService))]
