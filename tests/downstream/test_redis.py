"""Several replicas of a downstream service sharing revocations through Redis: a logout
received by one is refused by all and closes the sockets on all; Redis down behaves as
docs/downstream.md says (checks fall back to what each replica knows, or 503 when configured
fail-closed; the receiver answers 503 so the sender retries)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest
from authsvc_kit import Kit, KitConfig, Revocation, RevocationsUnavailable, SessionRevoked
from authsvc_kit.redis_store import RedisRevocations
from redis.asyncio import Redis

from tests.conftest import TEST_REDIS_URL
from tests.downstream.conftest import notes_service
from tests.downstream.issuer import AUDIENCE, CLIENT_ID, FakeIssuer
from tests.downstream.wsclient import next_message, open_socket, until_closed
from tests.support.redisserver import PrivateRedis, private_redis

pytestmark = pytest.mark.slow


def _form(token: str) -> bytes:
    return urlencode({"logout_token": token}).encode()


@pytest.fixture
def redis() -> Iterator[PrivateRedis]:
    with private_redis() as running:
        yield running


async def test_two_replicas_share_the_revocation_and_close_sockets(issuer: FakeIssuer) -> None:
    env = {"AUTHSVC_REDIS_URL": TEST_REDIS_URL, "AUTHSVC_REDIS_NAMESPACE": uuid.uuid4().hex}
    sub, sid = str(uuid.uuid4()), str(uuid.uuid4())
    token = issuer.access_token(sub=sub, sid=sid)
    bearer = {"Authorization": f"Bearer {token}"}
    with notes_service(issuer.url, env=env) as a, notes_service(issuer.url, env=env) as b:
        socket = await open_socket(b, token)
        assert (await next_message(socket))["type"] == "hello"
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"{b}/notes", headers=bearer)).status_code == 200
            sent = time.monotonic()
            logout = issuer.logout_token(sub=sub, sid=sid)
            response = await client.post(f"{a}/backchannel-logout", data={"logout_token": logout})
            assert response.status_code == 200, response.text
            closed = await until_closed(socket, within=2)
            assert (closed.code, closed.reason) == (4403, "session_revoked")
            assert closed.at - sent < 1.0
            for replica in (a, b):
                refused = await client.get(f"{replica}/notes", headers=bearer)
                assert refused.status_code == 401
                assert refused.json()["error"]["code"] == "session_revoked"
            # The same logout token at the other replica is a replay there too.
            again = await client.post(f"{b}/backchannel-logout", data={"logout_token": logout})
            assert again.status_code == 400


async def test_redis_down(issuer: FakeIssuer, redis: PrivateRedis) -> None:
    def config(**changes: object) -> KitConfig:
        return KitConfig(
            issuer=issuer.url,
            audience=AUDIENCE,
            client_id=CLIENT_ID,
            redis_url=redis.url,
            **changes,  # type: ignore[arg-type]
        )

    a, b = Kit(config()), Kit(config())
    closed_kit = Kit(config(redis_fail_closed=True))
    sub = str(uuid.uuid4())
    before_sid, during_sid = str(uuid.uuid4()), str(uuid.uuid4())
    before = issuer.access_token(sub=sub, sid=before_sid)
    during = issuer.access_token(sub=sub, sid=during_sid)
    fine = issuer.access_token()
    async with a.lifespan(), b.lifespan(), closed_kit.lifespan():
        status, _ = await a.backchannel.handle(_form(issuer.logout_token(sid=before_sid)))
        assert status == 200
        await asyncio.sleep(0.2)  # published: b's local copy hears it

        redis.kill()
        started = time.monotonic()
        # Fail-open (default): each replica checks what it knows; the call stays bounded.
        with pytest.raises(SessionRevoked):
            await b.authenticate(before)
        assert (await b.authenticate(fine)).user_id
        # Fail-closed: no token is accepted while the shared list cannot be read.
        with pytest.raises(RevocationsUnavailable):
            await closed_kit.authenticate(fine)
        # A logout arriving now: this replica refuses the session at once, but answers 503 so
        # the sender retries; the jti is not spent.
        logout = issuer.logout_token(sid=during_sid)
        status, body = await a.backchannel.handle(_form(logout))
        assert (status, body["error"]) == (503, "temporarily_unavailable")
        with pytest.raises(SessionRevoked):
            await a.authenticate(during)
        assert time.monotonic() - started < 3.0

        redis.start()
        status, _ = await a.backchannel.handle(_form(logout))  # the sender's retry
        assert status == 200
        with pytest.raises(SessionRevoked):
            await b.authenticate(during)  # read from Redis, whether or not b heard it
        assert (await closed_kit.authenticate(fine)).user_id


async def test_a_users_cut_off_only_moves_forward() -> None:
    """Two sub-only logouts written out of order (two replicas, or a retry): Redis keeps the
    later cut-off and the longer life, as each replica's local copy does."""
    namespace = uuid.uuid4().hex
    store = RedisRevocations(TEST_REDIS_URL, namespace=namespace)
    sub, now = str(uuid.uuid4()), time.time()
    later = Revocation(sid=None, sub=sub, issued_at=int(now), expires_at=now + 600)
    earlier = Revocation(sid=None, sub=sub, issued_at=int(now) - 100, expires_at=now + 60)
    reader = Redis.from_url(TEST_REDIS_URL, socket_timeout=2)
    try:
        await store.revoke(later)
        await store.revoke(earlier)
        key = f"{namespace}:sub:{sub}"
        assert await reader.get(key) == str(int(now)).encode()
        assert 590 <= await reader.ttl(key) <= 600
    finally:
        await reader.delete(f"{namespace}:sub:{sub}")
        await reader.aclose()
        await store.aclose()
