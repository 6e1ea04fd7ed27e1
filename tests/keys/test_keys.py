"""Signing keys: created once, shared by every replica, encrypted at rest."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from app.context import build_context
from app.core import migrate
from app.core.clock import Clock
from app.core.db import create_engine, table_of
from app.keys.models import SigningKey
from app.keys.service import KeyRingError
from tests.conftest import POSTGRES_URL, TEST_SECRET, bearer, make_settings, start_harness


async def test_replicas_starting_together_share_one_key(postgres_url: str) -> None:
    raw = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://", 1)
    name = f"authsvc_keys_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(raw)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{POSTGRES_URL.rpartition('/')[0]}/{name}"
    try:
        await asyncio.to_thread(migrate.upgrade, url)
        settings = make_settings(url)
        contexts = await asyncio.gather(*(build_context(settings, Clock()) for _ in range(4)))
        assert len({ctx.keys.ring.signer.kid for ctx in contexts}) == 1
        engine = create_engine(url)
        async with engine.connect() as conn:
            rows = (await conn.execute(select(table_of(SigningKey)))).all()
        await engine.dispose()
        assert len(rows) == 1
        assert b"PRIVATE KEY" not in rows[0].private_key_encrypted
        for ctx in contexts:
            await ctx.engine.dispose()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_key_is_stored_encrypted_and_bound_to_the_secret(sqlite_url: str) -> None:
    ctx = await build_context(make_settings(sqlite_url), Clock())
    try:
        other = make_settings(sqlite_url, secret_key=TEST_SECRET[::-1])
        with pytest.raises(KeyRingError, match="SECRET_KEY cannot decrypt signing key"):
            await build_context(other, Clock())
    finally:
        await ctx.engine.dispose()


def _pem_pair(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    private = tmp_path / f"{name}.pem"
    public = tmp_path / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


async def test_keys_from_pem_files(sqlite_url: str, tmp_path: Path) -> None:
    current, _ = _pem_pair(tmp_path, "current")
    _, previous_public = _pem_pair(tmp_path, "previous")
    settings = make_settings(
        sqlite_url,
        jwt_private_key_file=str(current),
        jwt_public_key_files=[str(previous_public)],
    )
    async for h in start_harness(settings):
        tokens = await h.login(await h.create_user())
        kid = jwt.get_unverified_header(tokens["access_token"])["kid"]
        jwks = (await h.client.get("/.well-known/jwks.json")).json()["keys"]
        assert len(jwks) == 2
        assert kid in {k["kid"] for k in jwks}
        assert all(k["alg"] == "ES256" for k in jwks)
        me = await h.client.get("/auth/me", headers=bearer(tokens["access_token"]))
        assert me.status_code == 200
