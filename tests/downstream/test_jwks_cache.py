"""The kit's key cache against a stand-in issuer that the tests stop, freeze and re-key:
Cache-Control honoured, stale keys served while one background fetch revalidates them, cached
keys kept through an outage, 503 (never 500) without them, every call bounded by a timeout;
and where keys may come from (https, the issuer's host)."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
from authsvc_kit import IssuerUnavailable, Kit, KitConfig
from starlette.types import Receive, Scope, Send

from tests.downstream.conftest import notes_service
from tests.downstream.issuer import AUDIENCE, CLIENT_ID, FakeIssuer, fake_issuer, slow_issuer
from tests.support.servers import free_port

pytestmark = pytest.mark.slow


def _kit(url: str, **changes: object) -> Kit:
    return Kit(KitConfig(issuer=url, audience=AUDIENCE, client_id=CLIENT_ID, **changes))  # type: ignore[arg-type]


async def test_jwks_cached_for_its_max_age_then_refetched() -> None:
    with fake_issuer(max_age=1) as issuer:
        kit = _kit(issuer.url, min_refetch_interval=0.1)
        async with kit.lifespan():
            await kit.authenticate(issuer.access_token())
            await kit.authenticate(issuer.access_token())
            assert (kit.keys.fetches, issuer.jwks_hits) == (1, 1)
            await asyncio.sleep(1.1)
            await kit.authenticate(issuer.access_token())  # stale: served, revalidated behind
            deadline = time.monotonic() + 2
            while kit.keys.fetches < 2:
                assert time.monotonic() < deadline, "the stale keys were never refetched"
                await asyncio.sleep(0.01)
            await kit.authenticate(issuer.access_token())
            assert (kit.keys.fetches, issuer.jwks_hits) == (2, 2)


async def test_issuer_down_cached_keys_keep_working_and_no_cache_is_503() -> None:
    with fake_issuer(max_age=1) as issuer:
        token = issuer.access_token()
        cached = _kit(issuer.url, min_refetch_interval=0.1)
        async with cached.lifespan():
            await cached.authenticate(token)
            issuer.stop()
            await asyncio.sleep(1.2)  # past max-age: the cache is stale and the issuer gone
            started = time.monotonic()
            for _ in range(20):
                assert (await cached.authenticate(token)).user_id
            assert time.monotonic() - started < 1.0  # a failed refetch is not retried per call

            empty = _kit(issuer.url)
            async with empty.lifespan():
                with pytest.raises(IssuerUnavailable):
                    await empty.authenticate(token)

            # And through a real notes process: 503 with a JSON error, never a 500.
            with notes_service(issuer.url) as notes:
                async with httpx.AsyncClient(base_url=notes, timeout=10) as client:
                    response = await client.get(
                        "/notes", headers={"Authorization": f"Bearer {token}"}
                    )
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "issuer_unavailable"
            assert response.headers["retry-after"] == "1"


async def test_a_frozen_issuer_costs_at_most_the_timeout() -> None:
    """The port accepts connections (the kernel's backlog) and never answers."""
    port = free_port()
    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", port))
        frozen.listen(16)
        issuer = FakeIssuer(port=port)  # keys to sign with, never served
        kit = _kit(issuer.url, http_timeout=0.3)
        async with kit.lifespan():
            started = time.monotonic()
            with pytest.raises(IssuerUnavailable):
                await kit.authenticate(issuer.access_token())
            assert time.monotonic() - started < 1.0


async def test_stale_keys_do_not_make_requests_wait_on_a_slow_issuer() -> None:
    with slow_issuer(max_age=1) as issuer:
        # The defaults scaled down: a fetch bounded by http_timeout, shorter than the interval.
        kit = _kit(issuer.url, http_timeout=0.8, min_refetch_interval=1.0)
        token = issuer.access_token()
        async with kit.lifespan():
            await kit.authenticate(token)
            issuer.frozen = True  # the issuer accepts the request and does not answer
            await asyncio.sleep(1.2)  # past max-age and the interval: the key is stale
            started = time.monotonic()
            results = await asyncio.gather(*(kit.authenticate(token) for _ in range(20)))
            waited = time.monotonic() - started
            issuer.frozen = False
        assert all(r.user_id for r in results)
        assert waited < 0.3, f"requests with a known kid waited {waited:.2f} s"


async def test_a_failed_revalidation_waits_the_interval_from_its_end() -> None:
    """The interval counts from the end of a fetch: an issuer that times out is not asked
    again as soon as the timeout has passed."""
    with slow_issuer(max_age=1) as issuer:
        kit = _kit(issuer.url, http_timeout=0.5, min_refetch_interval=0.6)
        token = issuer.access_token()

        async def requests_reach(count: int) -> None:
            deadline = time.monotonic() + 2
            while issuer.jwks_requests < count:
                assert time.monotonic() < deadline, f"{issuer.jwks_requests} JWKS requests"
                await asyncio.sleep(0.01)

        async with kit.lifespan():
            await kit.authenticate(token)
            issuer.frozen = True
            await asyncio.sleep(1.1)  # stale
            await kit.authenticate(token)  # one revalidation starts, times out after 0.5 s
            await requests_reach(2)
            await asyncio.sleep(0.8)  # 0.8 s since it started, 0.3 s since it ended
            await kit.authenticate(token)
            await asyncio.sleep(0.1)
            assert issuer.jwks_requests == 2
            await asyncio.sleep(0.4)  # past the interval since the end
            await kit.authenticate(token)
            await requests_reach(3)
            issuer.frozen = False


def test_the_issuer_must_be_https_unless_loopback_or_allowed() -> None:
    for url in (
        "https://auth.example.com",
        "http://127.0.0.1:8000",
        "http://localhost",
        "http://[::1]:1",
    ):
        assert KitConfig(issuer=url, audience=AUDIENCE).issuer == url
    for url in (
        "http://auth.example.com",
        "http://10.0.0.5:8000",
        "ftp://auth.example.com",
        "auth",
    ):
        with pytest.raises(ValueError, match="https"):
            KitConfig(issuer=url, audience=AUDIENCE)
    allowed = KitConfig.from_env(
        {
            "AUTHSVC_ISSUER": "http://authsvc:8000",
            "AUTHSVC_AUDIENCE": AUDIENCE,
            "AUTHSVC_ALLOW_HTTP": "true",
        }
    )
    assert allowed.issuer == "http://authsvc:8000"


class ElsewhereIssuer(FakeIssuer):
    """Discovery naming a `jwks_uri` that the kit must not use."""

    jwks_uri: str = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/.well-known/openid-configuration":
            body = json.dumps({"issuer": self.url, "jwks_uri": self.jwks_uri}).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        await super().__call__(scope, receive, send)


@pytest.mark.parametrize(
    "where",
    [
        "http://{other}/.well-known/jwks.json",  # another host, serving the same keys
        "https://keys.example.com/jwks.json",  # another host (https)
        "file:///etc/jwks.json",
    ],
)
async def test_keys_are_only_fetched_from_the_issuers_host(where: str) -> None:
    issuer = ElsewhereIssuer()
    issuer.start()
    try:
        # The issuer is 127.0.0.1; `localhost` reaches the same server under another name.
        issuer.jwks_uri = where.format(other=f"localhost:{issuer.port}")
        kit = _kit(issuer.url)
        async with kit.lifespan():
            with pytest.raises(IssuerUnavailable):
                await kit.authenticate(issuer.access_token())
        assert issuer.jwks_hits == 0
    finally:
        issuer.stop()
