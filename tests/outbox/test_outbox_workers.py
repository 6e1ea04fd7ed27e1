"""The outbox worker on PostgreSQL runs in every replica: several of them share the table
with `FOR UPDATE SKIP LOCKED`, and each message is delivered exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import jwt

from app.backchannel import repository as backchannel
from app.context import build_backchannel_sender
from app.core.db import create_engine
from app.outbox.service import OutboxWorker, RetryPolicy
from tests.conftest import start_harness
from tests.outbox.conftest import CLIENTS, backchannel_settings, outbox_rows
from tests.support.receiver import Receiver, eventually

SESSIONS = 150


async def test_workers_of_three_replicas_deliver_each_message_once(
    postgres_url: str, receiver: Receiver
) -> None:
    settings = backchannel_settings(postgres_url, receiver, outbox_poll_interval=0.05)
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
            lease=10,
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
        await eventually(lambda: len(receiver.received) >= total, within=30, what="deliveries")

        ours = {str(sid) for sid, _ in ended}

        async def our_rows() -> list[Any]:  # the run's database holds other tests' rows too
            return [r for r in await outbox_rows(h) if r.payload["sid"] in ours]

        async def all_delivered() -> bool:
            return all(r.delivered_at is not None for r in await our_rows())

        await eventually(all_delivered, what="the deliveries recorded")
        for worker in [h.ctx.outbox, *workers]:
            await worker.run_once()
        arrivals = Counter(
            (claims["sid"], claims["aud"])
            for claims in (
                jwt.decode(token, options={"verify_signature": False})
                for token in receiver.tokens()
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
