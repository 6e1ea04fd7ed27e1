"""The framework ceiling our ratios are taken against: bare FastAPI on the same uvicorn.

B0 answers constant JSON; B1 does one asyncpg round trip (SELECT 1) from a pool. `stacked_app`
is B0 wrapped in this service's own middleware stack (app.main.add_middleware_stack), to
measure what the stack costs a request.

B1P is B1 plus what DPoP costs at the least (issue 18's "one ES256 verification per request and
one replay-cache write"): it checks the ES256 signature of the request's `DPoP` header with the
header's key (loaded once per distinct header, as the service caches it) and inserts the
proof's jti into an unlogged table in a second round trip. B1P / B1 is the floor of the
service's `/auth/verify` with DPoP / without (bench.dpop).

B2 is the floor of a refresh (issue 20): one call of the service's own rotation SQL function
(`authsvc_rotate_refresh`) on the asyncpg pool, one ES256 access token signed with a loaded
key, the same JSON shape back. Only the token's hashes (two HMACs) are computed per request,
as the function needs them; no middleware, no settings, no session cache, no audit.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated

import asyncpg
import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel

from app.core.exposure import exposure_of
from app.core.settings import Settings
from app.main import add_middleware_stack
from app.sessions.tokens import RefreshTokenCodec

pool: asyncpg.Pool | None = None
_keys: dict[str, ec.EllipticCurvePublicKey] = {}
_refresh_codec = RefreshTokenCodec(os.environ.get("BENCH_SECRET", "unset"))
_signing_key = ec.generate_private_key(ec.SECP256R1())
_ROTATE = (
    "SELECT * FROM authsvc_rotate_refresh"
    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
)
# The service's defaults: idle timeout, touch interval, reuse interval (seconds).
_IDLE, _TOUCH, _REUSE = 24 * 3600.0, 60.0, 30.0


class RefreshBody(BaseModel):
    refresh_token: str


_ES256 = ec.ECDSA(hashes.SHA256())


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    global pool
    pool = await asyncpg.create_pool(os.environ["BENCH_DSN"], min_size=5, max_size=10)
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE UNLOGGED TABLE IF NOT EXISTS bench_seen_jti (jti text PRIMARY KEY)"
        )
    yield
    await pool.close()


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _proof_key(header_segment: str) -> ec.EllipticCurvePublicKey:
    key = _keys.get(header_segment)
    if key is None:
        jwk = json.loads(_b64(header_segment))["jwk"]
        x, y = (int.from_bytes(_b64(jwk[c]), "big") for c in ("x", "y"))
        key = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        _keys[header_segment] = key
    return key


def _verified_jti(proof: str) -> str:
    header, payload, signature = proof.split(".")
    raw = _b64(signature)
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    _proof_key(header).verify(der, f"{header}.{payload}".encode(), _ES256)
    jti: str = json.loads(_b64(payload))["jti"]
    return jti


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

    @api.post("/b2")
    async def b2(body: RefreshBody) -> dict[str, object]:
        assert pool is not None
        token = body.refresh_token
        session_id = RefreshTokenCodec.session_of(token)
        if session_id is None:
            raise HTTPException(401, "refresh_token_invalid")
        successor = _refresh_codec.successor(token, session_id)
        now = datetime.now(UTC)
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                _ROTATE,
                session_id,
                _refresh_codec.hash(token),
                uuid.uuid4(),
                _refresh_codec.hash(successor),
                now,
                _IDLE,
                _TOUCH,
                _REUSE,
                "127.0.0.1",
                "wrk",
                now,
                True,
                [],
                None,
            )
        if row["outcome"] not in ("rotated", "retried"):
            raise HTTPException(401, row["outcome"])
        issued = int(now.timestamp())
        claims = {"sub": str(row["user_id"]), "sid": str(session_id), "role": row["role"]}
        claims |= {"iat": issued, "exp": issued + 300, "jti": uuid.uuid4().hex}
        access = jwt.encode(claims, _signing_key, algorithm="ES256", headers={"typ": "at+jwt"})
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": 300,
            "refresh_token": successor,
            "session": {"id": str(session_id), "idle_expires_at": row["idle_expires_at"]},
        }

    @api.get("/b1p")
    async def b1p(dpop: Annotated[str, Header()]) -> dict[str, int]:
        assert pool is not None
        jti = _verified_jti(dpop)
        async with pool.acquire() as conn:
            value = await conn.fetchval("SELECT 1")
            fresh = await conn.fetchval(
                "INSERT INTO bench_seen_jti VALUES ($1) ON CONFLICT DO NOTHING RETURNING 1", jti
            )
        if fresh is None:
            raise HTTPException(401, "replayed")
        return {"ok": int(value)}

    return api


app = _ceiling(lifespan)


def _stacked() -> FastAPI:
    stacked = _ceiling()
    add_middleware_stack(stacked, Settings(_env_file=None), exposure_of(stacked.routes))
    return stacked


stacked_app = _stacked()
