"""Request-scoped dependencies shared by every area (Annotated aliases).

They are `async def` even where they do not await: FastAPI runs plain `def` dependencies in a
thread pool, a thread hop per dependency per request on the hot path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from app.audit.service import ClientInfo
from app.context import AppContext
from app.core.db import UnitOfWork
from app.core.errors import DomainError
from app.core.settings import Settings


async def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_settings_dep(ctx: ContextDep) -> Settings:
    return ctx.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


async def unit_of_work(ctx: ContextDep) -> AsyncIterator[UnitOfWork]:
    """One transaction per request, committed before the response is sent.

    Declared with scope="function" so the commit happens after the route returns but before
    FastAPI sends the response: a client never holds a token the database does not.
    """
    uow = UnitOfWork(ctx.engine)
    try:
        yield uow
    except DomainError as exc:
        await uow.finish(commit=exc.persist)
        raise
    except BaseException:
        await uow.finish(commit=False)
        raise
    else:
        await uow.finish(commit=True)


DbSession = Annotated[UnitOfWork, Depends(unit_of_work, scope="function")]


async def get_client_info(request: Request) -> ClientInfo:
    return ClientInfo(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


ClientDep = Annotated[ClientInfo, Depends(get_client_info)]
