"""A leaked signing key: `keys revoke` takes it out of signing, verification and JWKS on every
replica at the replica's next key reload, and the tokens it signed are refused from then on,
also those verified (and remembered) before."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.context import reload_keys
from app.core import migrate
from app.core.db import create_engine, table_of
from app.keys import service as keys
from tests.conftest import PASSWORD, Harness, bearer, error_code, make_settings, start_harness
from tests.support.cli import cli
from tests.support.servers import create_user_in, uvicorn_server

_audit = table_of(AuditEvent)


def _kid(token: str) -> str:
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


def _forged_with_the_signing_key(h: Harness, genuine: str) -> str:
    """What the holder of a leaked key does: mint tokens of its own (here, like a genuine one
    with a new jti, so only the key decides its fate)."""
    signer = h.ctx.keys.ring.signer
    claims: dict[str, Any] = jwt.decode(genuine, options={"verify_signature": False})
    claims["jti"] = uuid.uuid4().hex
    headers = {"kid": signer.kid, "typ": "at+jwt"}
    return jwt.encode(claims, signer.private_key, algorithm=signer.algorithm, headers=headers)


async def _me(h: Harness, token: str) -> httpx.Response:
    return await h.client.get("/auth/me", headers=bearer(token))


async def _refused(h: Harness, token: str) -> None:
    response = await _me(h, token)
    assert response.status_code == 401, response.text
    assert error_code(response) == "invalid_token"


async def _published_kids(h: Harness) -> set[str]:
    return {key["kid"] for key in (await h.client.get("/.well-known/jwks.json")).json()["keys"]}


async def test_keys_revoke_drops_the_signing_key_on_every_replica(
    private_database_url: str,
) -> None:
    url = private_database_url
    settings = make_settings(url)
    async for a in start_harness(settings):
        async for b in start_harness(settings):  # a second replica on the same database
            tokens = await a.login(await a.create_user())
            leaked = _kid(tokens["access_token"])
            forged = _forged_with_the_signing_key(a, tokens["access_token"])
            for replica in (a, b):
                for token in (tokens["access_token"], forged):
                    assert (await _me(replica, token)).status_code == 200  # verified, remembered

            revoked = await cli(url, "keys", "revoke", leaked)
            assert revoked.returncode == 0, revoked.stderr
            assert f"revoked key {leaked}" in revoked.stdout
            listed = await cli(url, "keys", "list")
            assert listed.returncode == 0, listed.stderr
            (line,) = listed.stdout.splitlines()[1:]  # the only live key: a fresh one, signing
            fresh, _, state, *_ = line.split()
            assert (state, fresh != leaked) == ("active", True)
            assert f"key {fresh} signs from now on" in revoked.stdout

            for replica in (a, b):
                replica.clock.advance(30)
                await reload_keys(replica.ctx)  # what each replica does every KEY_RELOAD_INTERVAL
                await _refused(replica, tokens["access_token"])
                await _refused(replica, forged)
                assert await _published_kids(replica) == {fresh}
                assert replica.ctx.keys.ring.signer.kid == fresh

            # Nobody is logged out: the session refreshes into a token of the fresh key.
            refreshed = await b.refresh(tokens["refresh_token"])
            assert refreshed.status_code == 200, refreshed.text
            access = refreshed.json()["access_token"]
            assert _kid(access) == fresh
            for replica in (a, b):
                assert (await _me(replica, access)).status_code == 200

            async with a.ctx.engine.connect() as conn:
                audited = await conn.execute(
                    select(_audit.c.details).where(_audit.c.event == "keys.revoked")
                )
                assert [row.details for row in audited] == [{"kid": leaked, "replaced_by": fresh}]


async def test_revoking_a_superseded_key_refuses_its_tokens_and_keeps_the_signer(
    private_database_url: str,
) -> None:
    """The issue's case: after `keys rotate --now` the old key keeps verifying while its tokens
    live (340 s by default); revoking it ends that at the next reload."""
    url = private_database_url
    async for h in start_harness(make_settings(url)):
        email = await h.create_user()
        old_token = (await h.login(email))["access_token"]
        old = _kid(old_token)
        rotated = await cli(url, "keys", "rotate", "--now")
        assert rotated.returncode == 0, rotated.stderr
        h.clock.advance(30)
        await reload_keys(h.ctx)
        new = h.ctx.keys.ring.signer.kid
        assert new != old
        assert (await _me(h, old_token)).status_code == 200  # retiring: still verifies
        new_token = (await h.login(email))["access_token"]
        assert _kid(new_token) == new

        revoked, unknown = await asyncio.gather(
            cli(url, "keys", "revoke", old), cli(url, "keys", "revoke", "no-such-kid")
        )
        assert revoked.returncode == 0, revoked.stderr
        assert "signs from now on" not in revoked.stdout  # it was not signing: no new key
        assert unknown.returncode == 1
        assert "key_not_found" in unknown.stderr
        assert "Traceback" not in unknown.stderr
        again = await cli(url, "keys", "revoke", old)
        assert again.returncode == 0, again.stderr
        assert f"key {old} was already revoked" in again.stdout

        await reload_keys(h.ctx)
        await _refused(h, old_token)
        assert (await _me(h, new_token)).status_code == 200
        assert await _published_kids(h) == {new}
        assert h.ctx.keys.ring.signer.kid == new


async def test_revoking_the_signer_never_brings_back_a_key_retired_before(
    private_database_url: str,
) -> None:
    """Keys A then B; long after A's tokens expired (but with A not yet marked retired: that
    happens lazily), B leaks and is revoked. A must not count as superseded by B's replacement
    only, and verify again."""
    settings = make_settings(private_database_url)
    lifetime, secret = settings.token_lifetime, settings.secret_key.get_secret_value()
    engine = create_engine(private_database_url)
    try:
        start = datetime.now(UTC)
        await keys.ensure_signing_key(engine, algorithm="ES256", secret=secret, now=start)
        b = await keys.rotate(
            engine,
            algorithm="ES256",
            secret=secret,
            now=start + timedelta(seconds=1),
            publish_delay=timedelta(0),
            token_lifetime=lifetime,
        )
        later = start + 2 * lifetime
        revocation = await keys.revoke(
            engine, b.kid, algorithm="ES256", secret=secret, now=later, token_lifetime=lifetime
        )
        assert revocation.replacement is not None
        ring = await keys.load_key_ring(engine, secret=secret, now=later, token_lifetime=lifetime)
        assert set(ring.verifiers) == {revocation.replacement.kid}
        assert ring.signer.kid == revocation.replacement.kid
    finally:
        await engine.dispose()


def _write_private_pem(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


async def test_a_remembered_token_is_refused_once_its_key_leaves_the_ring(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Keys from PEM files: the operator replaces a leaked key's file. Tokens it signed were
    verified and remembered; from the reload that drops the key they are refused, as any
    token of a key the ring does not hold."""
    signing_file = tmp_path / "signing.pem"
    _write_private_pem(signing_file)
    settings = make_settings(sqlite_url, jwt_private_key_file=str(signing_file))
    async for h in start_harness(settings):
        email = await h.create_user()
        token = (await h.login(email))["access_token"]
        assert (await _me(h, token)).status_code == 200  # verified and remembered
        assert (await _me(h, token)).status_code == 200  # from memory

        _write_private_pem(signing_file)  # the leaked key replaced, its public key not kept
        await reload_keys(h.ctx)
        await _refused(h, token)
        assert (await _me(h, (await h.login(email))["access_token"])).status_code == 200


# Every replica reloads its keys every KEY_RELOAD_INTERVAL, jittered by up to 20 %
# (app/core/periodic.py); the slack covers the reload itself on a busy test machine.
_RELOAD_INTERVAL = 1
_REFUSED_WITHIN = _RELOAD_INTERVAL * 1.2 + 1.0


@pytest.mark.slow
async def test_a_running_server_refuses_a_revoked_key_within_its_reload_interval(
    tmp_path: Path,
) -> None:
    """A real process and its own reload job, no test hook: the CLI revokes, and the server
    refuses the key's tokens and drops it from JWKS within one reload interval."""
    url = f"sqlite+aiosqlite:///{tmp_path}/server.db"
    await asyncio.to_thread(migrate.upgrade, url)
    email = await create_user_in(url)
    env = {"KEY_RELOAD_INTERVAL": str(_RELOAD_INTERVAL)}
    with uvicorn_server(url, env=env) as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            login = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
            access = login.json()["access_token"]
            assert (await client.get("/auth/me", headers=bearer(access))).status_code == 200

            revoked = await cli(url, "keys", "revoke", _kid(access))
            assert revoked.returncode == 0, revoked.stderr
            started = time.monotonic()
            while (me := await client.get("/auth/me", headers=bearer(access))).status_code == 200:
                assert time.monotonic() - started < _REFUSED_WITHIN
                await asyncio.sleep(0.05)
            assert error_code(me) == "invalid_token"
            jwks = (await client.get("/.well-known/jwks.json")).json()["keys"]
            assert _kid(access) not in {key["kid"] for key in jwks}
