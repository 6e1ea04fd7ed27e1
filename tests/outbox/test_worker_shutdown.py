"""The outbox worker stops when cancelled, even when the cancellation meets a wake-up.

On Python 3.11 `asyncio.wait_for` could swallow a cancellation that arrived as the awaited
event was set: the worker then slept again, and an application shutting down waited for it
forever (a test run hung about one time in two)."""

from __future__ import annotations

import asyncio

from app.core.clock import Clock
from app.core.db import create_engine
from app.outbox.service import OutboxWorker, RetryPolicy


async def test_a_cancellation_that_meets_a_wake_up_still_stops_the_worker(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    try:
        for _ in range(20):  # the race has two sides; meet it several times
            worker = OutboxWorker(
                engine,
                [],
                clock=Clock(),
                poll_interval=30,
                retry=RetryPolicy(base=1, cap=2),
                lease=10,
            )
            task = asyncio.create_task(worker.run())
            await asyncio.sleep(0.02)  # asleep, waiting for a wake-up or its poll interval
            worker.wake()
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=2)
            assert done == {task}, "the worker kept running after its cancellation"
    finally:
        await engine.dispose()
