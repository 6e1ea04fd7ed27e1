"""The framework ceiling our ratios are taken against: bare FastAPI on the same uvicorn.

B0 answers constant JSON; B1 does one asyncpg round trip (SELECT 1) from a pool.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI

pool: asyncpg.Pool | None = None


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global pool
    pool = await asyncpg.create_pool(os.environ["BENCH_DSN"], min_size=5, max_size=10)
    yield
    await pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/b0")
async def b0() -> dict[str, bool]:
    return {"ok": True}


@app.get("/b1")
async def b1() -> dict[str, int]:
    assert pool is not None
    async with pool.acquire() as conn:
        value = await conn.fetchval("SELECT 1")
    return {"ok": int(value)}
