"""Concurrent requests' small writes share one round trip.

A hot path that writes one small thing per request (a DPoP proof's jti, a refresh token's
rotation) pays more for the round trip, the client library's per-call work and, on PostgreSQL,
the commit than for the write itself: redis-py spends about 140 us of CPU on one SET, 27 us per
SET in a pipeline; `python -m bench.rotation_batches` measures the same for rotations.

`Batcher`: items submitted in the same event-loop iteration share one flush, sent on the next
iteration: no timer, so no added wait when a request is alone, and a batch grows only while
requests arrive together. A flush never waits for another: had batches queued behind the one
under way (larger batches under load; measured, no faster here), a flush stuck on a frozen
server would hold up the requests behind it beyond their time bound.
`Coalescer`: a Batcher of one-key writes, each key written once per batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")
R = TypeVar("R")

# One batch, in order of submission -> each item's result, or the exception its submitter gets.
BatchFlush = Callable[[list[T]], Awaitable[Sequence[R | Exception]]]
# One batch: each key once, with the value of its first submitter -> the keys whose write took
# effect.
Flush = Callable[[dict[K, V]], Awaitable[set[K]]]


class Batcher(Generic[T, R]):
    def __init__(self, flush: BatchFlush[T, R], *, max_batch: int = 256) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._items: list[T] = []
        self._waiters: list[asyncio.Future[R]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """The item's result. The flush's own exception, if it raised one, reaches every
        submitter of its batch; a submitter's cancellation does not stop the batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._items.append(item)
        self._waiters.append(future)
        if len(self._items) >= self._max_batch:
            self._start_flush()
        elif not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._start_flush)
        return await future

    def _start_flush(self) -> None:
        self._scheduled = False
        if not self._items:
            return
        items, waiters = self._items, self._waiters
        self._items, self._waiters = [], []
        task = asyncio.get_running_loop().create_task(self._run(items, waiters))
        self._tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    async def _run(self, items: list[T], waiters: list[asyncio.Future[R]]) -> None:
        try:
            results = await self._flush(items)
            if len(results) != len(items):
                raise RuntimeError(f"a flush of {len(items)} items gave {len(results)} results")
        except asyncio.CancelledError:
            for future in waiters:
                future.cancel()
            raise
        except Exception as exc:
            for future in waiters:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, result in zip(waiters, results, strict=True):
            if future.done():  # its submitter was cancelled
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


class Coalescer(Generic[K, V]):
    def __init__(self, flush: Flush[K, V], *, max_batch: int = 256) -> None:
        self._flush = flush
        self._batcher: Batcher[tuple[K, V], bool] = Batcher(self._write, max_batch=max_batch)

    async def submit(self, key: K, value: V) -> bool:
        """Whether the write of `key` took effect. A key submitted twice in one batch is
        written once: its first submitter gets the answer, the others False (not first).
        The flush's exception, if any, is raised to every submitter of its batch."""
        return await self._batcher.submit((key, value))

    async def _write(self, items: list[tuple[K, V]]) -> list[bool | Exception]:
        values: dict[K, V] = {}
        for key, value in items:
            values.setdefault(key, value)
        written = await self._flush(values)
        answered: set[K] = set()
        results: list[bool | Exception] = []
        for key, _ in items:
            results.append(key in written and key not in answered)
            answered.add(key)
        return results
