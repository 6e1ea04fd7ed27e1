from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.core.components import provider
from app.gateway.service import IntrospectionService

IntrospectionDep = Annotated[IntrospectionService, Depends(provider(IntrospectionService))]
