"""app.core.coalesce: concurrent writes share a round trip, and nobody is left waiting."""

from __future__ import annotations

import asyncio

import pytest

from app.core.coalesce import Batcher, Coalescer


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


# --- Batcher: each item its own result -------------------------------------------------------


async def _turns(count: int = 4) -> None:
    """Let the loop run a few iterations: a submit's task, the flush it schedules, the flush."""
    for _ in range(count):
        await asyncio.sleep(0)


class Squares:
    """Answers each item with its square, or an exception for a negative one; records batches.
    Each flush waits on `gate` (set by default), so a test can hold one under way."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def flush(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(list(items))
        await self.gate.wait()
        return [ValueError(f"negative {i}") if i < 0 else i * i for i in items]


async def test_each_submitter_gets_its_own_result_or_error() -> None:
    squares = Squares()
    batcher: Batcher[int, int] = Batcher(squares.flush)
    results = await asyncio.gather(*(batcher.submit(i) for i in (3, -1, 2)), return_exceptions=True)
    assert results[::2] == [9, 4]
    assert isinstance(results[1], ValueError)
    assert squares.batches == [[3, -1, 2]]  # in order of submission, one flush


async def test_a_lone_item_goes_on_the_next_iteration() -> None:
    squares = Squares()
    batcher: Batcher[int, int] = Batcher(squares.flush)
    pending = asyncio.ensure_future(batcher.submit(5))
    await _turns(3)  # the submit's task, the flush it scheduled, the flush: no timer
    assert squares.batches == [[5]]
    assert await pending == 25


async def test_a_flush_under_way_holds_up_no_later_item() -> None:
    squares = Squares()
    squares.gate.clear()
    batcher: Batcher[int, int] = Batcher(squares.flush)
    first = asyncio.ensure_future(batcher.submit(1))
    await _turns()
    second = asyncio.ensure_future(batcher.submit(2))
    await _turns()
    assert squares.batches == [[1], [2]]
    squares.gate.set()
    assert list(await asyncio.gather(first, second)) == [1, 4]


async def test_a_flush_answering_the_wrong_number_of_items_fails_them_all() -> None:
    async def short(items: list[int]) -> list[int | Exception]:
        return [0]

    batcher: Batcher[int, int] = Batcher(short)
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
