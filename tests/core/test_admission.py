"""Admission control (app/core/admission.py): beyond its slots the service sheds at once with
503 overloaded and Retry-After, answers every request it admits, and never sheds the probes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.admission import Admission
from app.core.middleware import RequestEnvelopeMiddleware
from tests.conftest import PASSWORD, Harness, error_code, make_settings, start_harness


def _gated(
    app: ASGIApp, *, max_in_flight: int, max_wait: float
) -> tuple[RequestEnvelopeMiddleware, Admission]:
    """`app` behind the request envelope and its admission gate, as the service has it."""
    admission = Admission(max_in_flight=max_in_flight, max_wait=max_wait)
    return RequestEnvelopeMiddleware(app, no_store_prefixes=(), admission=admission), admission


@pytest.fixture
async def tiny_admission(database_url: str) -> AsyncIterator[Harness]:
    """Two slots, 50 ms of wait, and real (owasp) password hashes: logins are slow enough
    that a burst of them overflows the slots."""
    settings = make_settings(
        database_url,
        admission_max_in_flight=2,
        admission_max_wait_ms=50,
        password_hash_profile="owasp",
    )
    async for h in start_harness(settings):
        yield h


async def test_a_burst_beyond_capacity_is_shed_fast_and_every_admitted_request_answered(
    tiny_admission: Harness,
) -> None:
    email = await tiny_admission.create_user()
    client = tiny_admission.client

    async def log_in() -> httpx.Response:
        return await client.post("/auth/login", json={"email": email, "password": PASSWORD})

    responses = await asyncio.gather(*(log_in() for _ in range(16)))
    probes = await asyncio.gather(
        *(log_in() for _ in range(8)), *(client.get("/healthz") for _ in range(8))
    )

    statuses = [r.status_code for r in responses + list(probes[:8])]
    assert set(statuses) <= {200, 503}, statuses  # every request answered, never a 500
    assert statuses.count(200) >= 2, statuses
    shed = [r for r in responses + list(probes[:8]) if r.status_code == 503]
    assert shed, statuses
    for response in shed:
        assert error_code(response) == "overloaded"
        assert response.headers["retry-after"] == "1"
    assert [r.status_code for r in probes[8:]] == [200] * 8  # the probe is never shed


async def test_a_request_waiting_for_a_slot_gets_the_one_freed_within_the_wait() -> None:
    release = asyncio.Event()
    started: list[str] = []

    async def slow_app(scope: Scope, receive: Receive, send: Send) -> None:
        started.append(scope["path"])
        if scope["path"] == "/first":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gated, admission = _gated(slow_app, max_in_flight=1, max_wait=2.0)
    transport = httpx.ASGITransport(app=gated)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        first = asyncio.create_task(client.get("/first"))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(client.get("/second"))
        await asyncio.sleep(0.05)
        assert started == ["/first"]  # the second waits for the only slot
        release.set()
        assert (await first).status_code == 200
        assert (await second).status_code == 200
        assert started == ["/first", "/second"]
        assert admission.in_flight == 0
        assert not admission.waiters


async def test_a_request_is_shed_when_no_slot_frees_within_the_wait() -> None:
    release = asyncio.Event()

    async def stuck_app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/first":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gated, admission = _gated(stuck_app, max_in_flight=1, max_wait=0.05)
    transport = httpx.ASGITransport(app=gated)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        first = asyncio.create_task(client.get("/first"))
        await asyncio.sleep(0.02)
        shed = await client.get("/second")
        assert shed.status_code == 503
        assert error_code(shed) == "overloaded"
        assert shed.headers["retry-after"] == "1"
        assert (await client.get("/healthz")).status_code == 200  # exempt: not queued
        release.set()
        assert (await first).status_code == 200
        assert admission.in_flight == 0
        assert not admission.waiters


async def test_a_shed_answer_echoes_the_request_id_and_is_not_cached() -> None:
    release = asyncio.Event()

    async def stuck_app(scope: Scope, receive: Receive, send: Send) -> None:
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gated, admission = _gated(stuck_app, max_in_flight=1, max_wait=0.01)
    transport = httpx.ASGITransport(app=gated)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        holder = asyncio.create_task(client.get("/holder"))
        await asyncio.sleep(0.01)
        sane = await client.get("/a", headers={"X-Request-ID": "req-42"})
        insane = await client.get("/b", headers={"X-Request-ID": "req 42;x"})
        release.set()
        assert (await holder).status_code == 200
    assert sane.status_code == insane.status_code == 503
    assert sane.headers["x-request-id"] == "req-42"  # a client can match the 503 to its request
    assert "x-request-id" not in insane.headers
    assert sane.headers["cache-control"] == "no-store"
    assert sane.headers["x-content-type-options"] == "nosniff"


async def test_a_request_that_could_not_be_served_within_the_wait_is_shed_at_once() -> None:
    """The queue drains one request per recent request duration per slot: a newcomer that
    would wait longer than max_wait is answered now, not at the end of a wait it cannot win."""
    release = asyncio.Event()
    work = {"seconds": 0.05}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/holder":
            await release.wait()
        else:
            await asyncio.sleep(work["seconds"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    gated, admission = _gated(app, max_in_flight=1, max_wait=1.0)
    transport = httpx.ASGITransport(app=gated)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert (await client.get("/warm")).status_code == 200  # about 50 ms a request
        assert 0.04 < admission.duration < 0.5
        # The queue then drains faster than the estimate: on a loaded machine the waiters it
        # kept at 50 ms each came close to their 1 s bound, and the last were shed.
        work["seconds"] = 0.005
        holder = asyncio.create_task(client.get("/holder"))
        await asyncio.sleep(0.01)
        queue_room = int(admission.max_wait / admission.duration)  # waiters it can serve
        waiting = [asyncio.create_task(client.get(f"/w{i}")) for i in range(queue_room)]
        await asyncio.sleep(0.01)
        assert len(admission.waiters) == queue_room
        loop = asyncio.get_running_loop()
        started = loop.time()
        beyond = await client.get("/beyond")
        assert beyond.status_code == 503
        assert loop.time() - started < 0.1  # at once, not after max_wait (1 s)
        release.set()
        assert (await holder).status_code == 200
        statuses = [(await w).status_code for w in waiting]
    assert statuses.count(200) >= queue_room - 1, statuses  # the queue it kept is served
    assert admission.in_flight == 0


async def test_admission_wraps_the_whole_application(tiny_admission: Harness) -> None:
    """A shed request runs none of FastAPI's or our other layers: admission is outermost."""
    stack = tiny_admission.app.build_middleware_stack()
    assert isinstance(stack, RequestEnvelopeMiddleware)
    assert stack.admission is not None
    assert stack.admission.max_in_flight == 2
