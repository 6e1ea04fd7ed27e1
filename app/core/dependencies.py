"""Request-scoped dependencies every area shares (Annotated aliases).

They are `async def` even where they do not await: FastAPI runs plain `def` dependencies in a
thread pool, a thread hop per dependency per request on the hot path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.client import ClientInfo, arrival_of
from app.core.clock import Clock
from app.core.components import provider
from app.core.db import UnitOfWork, committed_unit
from app.core.ratelimit import RateLimiter
from app.core.settings import Settings

SettingsDep = Annotated[Settings, Depends(provider(Settings))]
ClockDep = Annotated[Clock, Depends(provider(Clock))]
LimiterDep = Annotated[RateLimiter, Depends(provider(RateLimiter))]


@dataclass(frozen=True, slots=True)
class Database:
    """The engine, as a component of its own type (a bare AsyncEngine is a library class)."""

    engine: AsyncEngine


DatabaseDep = Annotated[Database, Depends(provider(Database))]


async def unit_of_work(database: DatabaseDep) -> AsyncIterator[UnitOfWork]:
    """One transaction per request, committed before the response is sent; any exception
    rolls it back. A refusal that must still be recorded (a failed login) is returned by the
    route as a response, not raised, so that its records commit with everything else.

    Declared with scope="function" so the commit happens after the route returns but before
    FastAPI sends the response: a client never holds a token the database does not.
    """
    async with committed_unit(database.engine) as uow:
        yield uow


DbSession = Annotated[UnitOfWork, Depends(unit_of_work, scope="function")]


async def get_client_info(request: Request) -> ClientInfo:
    return ClientInfo(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        arrived_at=arrival_of(request.scope),
    )


ClientDep = Annotated[ClientInfo, Depends(get_client_info)]
