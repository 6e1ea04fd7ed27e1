"""The framework ceiling our ratios are taken against: bare FastAPI on the same uvicorn.

B0 answers constant JSON; B1 does one asyncpg round trip (SELECT 1) from a pool. `stacked_app`
is B0 wrapped in this service's own middleware stack (app.main.add_middleware_stack), to
measure what the stack costs a request.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI

from app.core.exposure import exposure_of
from app.core.settings import Settings
from app.main import add_middleware_stack

pool: asyncpg.Pool | None = None


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global pool
    pool = await asyncpg.create_pool(os.environ["BENCH_DSN"], min_size=5, max_size=10)
    yield
    await pool.close()


def _ceiling(lifespan_: object = None) -> FastAPI:
    api = FastAPI(lifespan=lifespan_)  # type: ignore[arg-type]

    @api.get("/b0")
    async def b0() -> dict[str, bool]:
        return {"ok": True}

    @api.get("/b1")
    async def b1() -> dict[str, int]:
        assert pool is not None
        async with pool.acquire() as conn:
            value = await conn.fetchval("SELECT 1")
        return {"ok": int(value)}

    return api


app = _ceiling(lifespan)
stacked_app = _ceiling()
add_middleware_stack(stacked_app, Settings(_env_file=None), exposure_of(stacked_app.routes))
