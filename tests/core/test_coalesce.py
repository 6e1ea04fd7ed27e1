"""app.core.coalesce: concurrent one-key writes share a round trip, and nobody is left waiting."""

from __future__ import annotations

import asyncio

import pytest

from app.core.coalesce import Coalescer


class Store:
    """A set that records each flush it was asked for."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.seen: set[str] = set()
        self.flushes: list[dict[str, int]] = []
        self.fail = fail

    async def flush(self, batch: dict[str, int]) -> set[str]:
        self.flushes.append(dict(batch))
        await asyncio.sleep(0)  # a round trip
        if self.fail is not None:
            raise self.fail
        fresh = set(batch) - self.seen
        self.seen |= fresh
        return fresh


async def test_concurrent_submits_share_one_flush() -> None:
    store = Store()
    coalescer = Coalescer(store.flush)
    results = await asyncio.gather(*(coalescer.submit(f"k{i}", i) for i in range(20)))
    assert results == [True] * 20
    assert len(store.flushes) == 1
    assert store.flushes[0] == {f"k{i}": i for i in range(20)}


async def test_a_key_twice_in_a_batch_is_first_once() -> None:
    store = Store()
    coalescer = Coalescer(store.flush)
    results = await asyncio.gather(*(coalescer.submit("same", i) for i in range(5)))
    assert results == [True, False, False, False, False]
    assert store.flushes == [{"same": 0}]  # the first submitter's value
    assert await coalescer.submit("same", 9) is False  # later batches see it written


async def test_a_lone_submit_and_successive_batches() -> None:
    store = Store()
    coalescer = Coalescer(store.flush)
    assert await coalescer.submit("a", 1) is True
    assert await coalescer.submit("b", 1) is True
    assert len(store.flushes) == 2


async def test_a_failed_flush_reaches_every_submitter() -> None:
    coalescer = Coalescer(Store(fail=ConnectionError("down")).flush)
    results = await asyncio.gather(
        *(coalescer.submit(f"k{i}", i) for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)


async def test_batches_are_bounded() -> None:
    store = Store()
    coalescer = Coalescer(store.flush, max_batch=8)
    assert all(await asyncio.gather(*(coalescer.submit(f"k{i}", i) for i in range(20))))
    assert [len(batch) for batch in store.flushes] == [8, 8, 4]


async def test_a_cancelled_submitter_does_not_stop_the_others() -> None:
    store = Store()
    coalescer = Coalescer(store.flush)
    first = asyncio.ensure_future(coalescer.submit("a", 1))
    second = asyncio.ensure_future(coalescer.submit("b", 1))
    await asyncio.sleep(0)
    first.cancel()
    assert await second is True
    with pytest.raises(asyncio.CancelledError):
        await first
    assert store.seen == {"a", "b"}
