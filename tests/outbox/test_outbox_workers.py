"""The outbox worker on PostgreSQL runs in every replica: several of them share the table
with `FOR UPDATE SKIP LOCKED`, and each message is delivered exactly once; a database outage
is logged and retried, never the end of the worker."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from typing import Any

import jwt
import pytest

from app.backchannel import repository as backchannel
from app.context import build_backchannel_sender
from app.core import migrate
from app.core.db import create_engine
from app.outbox.service import OutboxWorker, RetryPolicy
from tests.conftest import bearer, start_harness
from tests.outbox.conftest import CLIENTS, backchannel_settings, outbox_rows
from tests.support.pgcluster import PgCluster
from tests.support.receiver import Receiver, eventually

SESSIONS = 150


async def test_workers_of_three_replicas_deliver_each_message_once(
    postgres_url: str, receiver: Receiver
) -> None:
    # Exactly once needs every first attempt to succeed: on a loaded CI machine the receiver
    # once answered some after the 2 s default timeout (the clock is frozen, so no retry came).
    settings = backchannel_settings(
        postgres_url, receiver, outbox_poll_interval=0.05, backchannel_logout_timeout=10.0
    )
    runner = start_harness(settings)
    h = await runner.__anext__()
    engines = [create_engine(postgres_url) for _ in range(2)]
    senders = [build_backchannel_sender(settings, h.ctx.keys) for _ in engines]
    # Two more replicas' workers (each its own pool), taking small batches so that all three
    # keep meeting on the same rows.
    workers = [
        OutboxWorker(
            engine,
            [sender],
            clock=h.clock,
            poll_interval=0.05,
            retry=RetryPolicy(base=1, cap=2),
            lease=30,  # longer than an attempt, as the service's own (app.context)
            batch_size=5,
        )
        for engine, sender in zip(engines, senders, strict=True)
    ]
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        ended = [(uuid.uuid4(), uuid.uuid4()) for _ in range(SESSIONS)]
        async with h.ctx.engine.begin() as conn:
            await backchannel.enqueue_logouts(conn, ended, CLIENTS, now=h.clock.now())
        for worker in [h.ctx.outbox, *workers]:
            worker.wake()
        total = SESSIONS * len(CLIENTS)
        ours = {str(sid) for sid, _ in ended}
        await eventually(lambda: len(receiver.about(*ours)) >= total, within=30, what="deliveries")

        async def our_rows() -> list[Any]:  # the run's database holds other tests' rows too
            return [r for r in await outbox_rows(h) if r.payload.get("sid") in ours]

        async def all_delivered() -> bool:
            return all(r.delivered_at is not None for r in await our_rows())

        await eventually(all_delivered, what="the deliveries recorded")
        for worker in [h.ctx.outbox, *workers]:
            await worker.run_once()
        arrivals = Counter(
            (claims["sid"], claims["aud"])
            for claims in (
                jwt.decode(token, options={"verify_signature": False})
                for arrival in receiver.about(*ours)
                for token in arrival.form["logout_token"]
            )
        )
        assert len(arrivals) == total
        assert set(arrivals.values()) == {1}
        rows = await our_rows()
        assert len(rows) == total
        assert {r.attempts for r in rows} == {1}
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sender in senders:
            await sender.aclose()
        for engine in engines:
            await engine.dispose()
        await runner.aclose()  # type: ignore[attr-defined]


async def test_the_worker_survives_a_database_outage(
    pg_cluster: PgCluster, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A database that goes away is logged (outbox.db_unavailable) and retried: the worker
    task lives on and delivers once the database is back."""
    await asyncio.to_thread(migrate.upgrade, pg_cluster.url)
    settings = backchannel_settings(
        pg_cluster.url, receiver, db_pool_timeout=1, outbox_poll_interval=0.1
    )
    async with contextlib.asynccontextmanager(start_harness)(settings) as h:
        a = await h.login(await h.create_user())
        await asyncio.to_thread(pg_cluster.stop)
        await eventually(
            lambda: any(r.getMessage() == "outbox.db_unavailable" for r in caplog.records),
            what="the worker to meet the outage",
        )
        [worker] = [t for t in asyncio.all_tasks() if t.get_name() == "outbox"]
        await asyncio.sleep(0.3)  # several failed rounds
        assert not worker.done()

        await asyncio.to_thread(pg_cluster.start)

        async def logged_out() -> bool:  # the first requests may meet the pool's dead sockets
            response = await h.client.post("/auth/logout", headers=bearer(a["access_token"]))
            return response.status_code == 204

        await eventually(logged_out, within=15, what="a logout after the restart")
        await eventually(lambda: len(receiver.about(a["session"]["id"])) == 2, what="the delivery")
        assert not worker.done()
