"""The kit's key cache against a stand-in issuer that the tests stop, freeze and re-key:
Cache-Control honoured, cached keys kept through an outage, 503 (never 500) without them, and
every call bounded by a timeout."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
from authsvc_kit import IssuerUnavailable, Kit, KitConfig

from tests.downstream.conftest import notes_service
from tests.downstream.issuer import AUDIENCE, CLIENT_ID, FakeIssuer, fake_issuer
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
