"""The reference for `python -m bench.kit`: bare FastAPI doing only the PyJWT ES256 verification
the kit does per request (no kit: no typ, revocation or identity plumbing)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import FastAPI, Header, HTTPException

_KEY = load_pem_public_key(Path(os.environ["BENCH_KIT_PUBLIC_PEM"]).read_bytes())
_ISSUER = os.environ["BENCH_KIT_ISSUER"]
_AUDIENCE = os.environ["BENCH_KIT_AUDIENCE"]

app = FastAPI()


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/notes")
async def notes(authorization: Annotated[str, Header()] = "") -> dict[str, Any]:
    try:
        claims = jwt.decode(
            authorization.removeprefix("Bearer "),
            _KEY,  # type: ignore[arg-type]
            algorithms=["ES256"],
            audience=_AUDIENCE,
            issuer=_ISSUER,
        )
    except jwt.PyJWTError as exc:
        raise HTTPException(401) from exc
    # The same answer as the notes service, so only the verification path differs.
    identity = {
        "user_id": claims["sub"],
        "session_id": claims.get("sid"),
        "role": claims.get("role"),
        "client_id": claims.get("client_id"),
        "expires_at": claims["exp"],
    }
    return {"identity": identity, "notes": []}
