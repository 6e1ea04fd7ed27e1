"""The delivery worker: one in every replica, taking due messages from the outbox and handing
each to the sender of its kind, with retries, exponential backoff with jitter, a give-up time
and an audit row for what gave up. No HTTP here: a sender owns its transport.

Delivery is at least once. A worker claims messages in one short transaction (a lease: their
`next_attempt_at` moves past the attempt's longest duration), delivers outside any
transaction, then records the outcome in another. A worker that dies mid-attempt leaves its
messages to whoever claims them when the lease ends; state lives only in the table, so a
restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit.service import record
from app.core.client import ClientInfo
from app.core.clock import Clock
from app.core.db import autocommit_connection
from app.core.errors import is_database_unavailable
from app.core.metrics import (
    OUTBOX_ATTEMPT_FAILURES,
    OUTBOX_DELIVERY_SECONDS,
    OUTBOX_GAVE_UP,
    OUTBOX_PENDING,
)
from app.outbox import repository
from app.outbox.repository import ClaimedMessage, NewMessage

logger = logging.getLogger("app.outbox")

# Delivered and given-up messages are kept this long for inspection, then deleted (checked
# once an hour by each worker).
FINISHED_RETENTION = timedelta(days=7)
_PRUNE_EVERY = 3600.0

__all__ = ["Attempt", "ClaimedMessage", "NewMessage", "OutboxWorker", "Sender", "Subject"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one delivery attempt came to. `error` is a short fixed label (a metric label and
    `last_error`): never a secret, never a receiver's body."""

    delivered: bool
    error: str | None = None
    # The receiver refused the message itself: no retry can succeed.
    definitive: bool = False


@dataclass(frozen=True, slots=True)
class Subject:
    """Whom a message concerns, for the audit row of its give-up."""

    user_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    details: Mapping[str, object] = field(default_factory=dict)


class Sender(Protocol):
    """Delivers the messages of one kind."""

    @property
    def kind(self) -> str: ...

    @property
    def failure_event(self) -> str:
        """The audit event recorded when a message of this kind is given up."""
        ...

    @property
    def give_up_after(self) -> timedelta: ...

    async def send(self, message: ClaimedMessage, now: datetime) -> Attempt:
        """One attempt, bounded in time by the sender itself."""
        ...

    def subject(self, payload: Mapping[str, Any]) -> Subject: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base: float  # seconds before the second attempt (before jitter)
    cap: float  # the longest wait between two attempts

    def delay(self, attempts: int) -> float:
        """Exponential backoff with jitter: base * 2^(n-1) capped, then drawn from its upper
        half, so workers retrying the same receiver do not come back in step."""
        ceiling: float = min(self.cap, self.base * 2.0 ** min(max(attempts - 1, 0), 32))
        return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 - not security


class OutboxWorker:
    def __init__(
        self,
        engine: AsyncEngine,
        senders: Sequence[Sender],
        *,
        clock: Clock,
        poll_interval: float,
        retry: RetryPolicy,
        lease: float,
        batch_size: int = 50,
    ) -> None:
        self._engine = engine
        self._senders = {sender.kind: sender for sender in senders}
        self._clock = clock
        self._poll_interval = poll_interval
        self._retry = retry
        self._lease = timedelta(seconds=lease)
        self._batch_size = batch_size
        self._wake = asyncio.Event()
        self._sampled_at = float("-inf")
        self._pruned_at = time.monotonic()
        # The last claim filled every free slot: a finished delivery looks for more at once.
        self._saturated = False

    def wake(self) -> None:
        """Look for due messages now (called after a transaction that wrote some commits, and
        when another replica announces one). Safe to call from any callback on the loop."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled. Up to `batch_size` deliveries are in flight at once, and
        a free slot is refilled as soon as more is due: a receiver that hangs until the
        timeout holds its own slot, never the other messages. A failure of the database (or
        anything else) is logged and retried with backoff; it never ends the task."""
        in_flight: set[asyncio.Task[None]] = set()
        failures = 0
        try:
            while True:
                self._wake.clear()
                room = self._batch_size - len(in_flight)
                try:
                    claimed = await self._claim(room) if room > 0 else []
                    await self._sample_pending()
                    await self._prune()
                    failures = 0
                except Exception as exc:
                    failures += 1
                    wait = min(self._poll_interval, 0.1 * 2 ** min(failures, 10))
                    _log_failure(exc, wait)
                    await self._sleep(wait)
                    continue
                for message in claimed:
                    task = asyncio.create_task(self._deliver_logged(message))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                # Every slot taken, or as many as there was room for: more may be due, claimed
                # as soon as a delivery ends (its end wakes this loop).
                self._saturated = len(claimed) == room
                if self._saturated and len(in_flight) < self._batch_size:
                    continue
                await self._sleep(self._poll_interval)
        finally:
            for task in in_flight:
                task.cancel()  # its lease ends, and a worker takes the message again
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _sleep(self, seconds: float) -> None:
        """Until woken (a commit, a notification, a freed slot while saturated) or `seconds`."""
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
        # that arrives as the event is set, and the worker then never stops (a shutdown hung).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def run_once(self) -> bool:
        """Deliver one batch of due messages and wait for all of them (tests, tools); whether
        the batch was full (more may be due)."""
        claimed = await self._claim(self._batch_size)
        results = await asyncio.gather(
            *(self._deliver(message) for message in claimed), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Exception):
                _log_failure(result, self._lease.total_seconds())
        await self._sample_pending()
        return len(claimed) >= self._batch_size

    async def _claim(self, limit: int) -> list[ClaimedMessage]:
        now = self._clock.now()
        async with autocommit_connection(self._engine) as conn:
            return await repository.claim_due(
                conn, now=now, lease_until=now + self._lease, limit=limit
            )

    async def _deliver_logged(self, message: ClaimedMessage) -> None:
        try:
            await self._deliver(message)
        except Exception as exc:
            # The outcome was not recorded: the lease ends and the message is tried again.
            _log_failure(exc, self._lease.total_seconds())
        finally:
            if self._saturated:
                self._wake.set()  # a slot is free and more may be due

    def sender(self, kind: str) -> Sender | None:
        return self._senders.get(kind)

    async def _deliver(self, message: ClaimedMessage) -> None:
        sender = self._senders.get(message.kind)
        if sender is None:
            # Written by a newer replica during a rolling upgrade: leave it to one that knows it.
            await self._reschedule(message, self._retry.cap, "unknown_kind")
            return
        try:
            attempt = await sender.send(message, self._clock.now())
        except Exception:  # a sender's bug: counted as a failed attempt, never the worker's end
            logger.exception("outbox.sender_failed", extra={"kind": message.kind})
            attempt = Attempt(delivered=False, error="sender_error")
        now = self._clock.now()
        if attempt.delivered:
            async with autocommit_connection(self._engine) as conn:
                await repository.mark_delivered(conn, message.id, now=now)
            OUTBOX_DELIVERY_SECONDS.labels(message.kind).observe(
                max(0.0, (now - message.created_at).total_seconds())
            )
            return
        error = attempt.error or "failed"
        OUTBOX_ATTEMPT_FAILURES.labels(message.kind, error).inc()
        deadline = message.created_at + sender.give_up_after
        if attempt.definitive or now >= deadline:
            await self._give_up(
                sender, message, now, error, error if attempt.definitive else "expired"
            )
            return
        delay = self._retry.delay(message.attempts)
        wait = min(delay, (deadline - now).total_seconds())
        await self._reschedule(message, wait, error)

    async def _reschedule(self, message: ClaimedMessage, wait: float, error: str) -> None:
        at = self._clock.now() + timedelta(seconds=wait)
        async with autocommit_connection(self._engine) as conn:
            await repository.reschedule(conn, message, at=at, error=error)
        logger.info(
            "outbox.retry_scheduled",
            extra={
                "kind": message.kind,
                "message_id": message.id,
                "attempts": message.attempts,
                "error": error,
                "retry_in": round(wait, 3),
            },
        )

    async def _give_up(
        self, sender: Sender, message: ClaimedMessage, now: datetime, error: str, reason: str
    ) -> None:
        """Stop trying, and say so in the audit trail in the same transaction. `reason`:
        the receiver's refusal (`error`, definitive) or "expired" (the give-up time passed)."""
        subject = sender.subject(message.payload)
        async with self._engine.begin() as conn:
            if not await repository.give_up(conn, message, now=now, error=error):
                return  # another worker holds it now: its outcome stands
            await record(
                conn,
                sender.failure_event,
                now=now,
                client=ClientInfo(),
                user_id=subject.user_id,
                session_id=subject.session_id,
                **subject.details,
                reason=reason,
                last_error=error,
                attempts=message.attempts,
                message_id=message.id,
            )
        OUTBOX_GAVE_UP.labels(message.kind, reason).inc()
        logger.warning(
            "outbox.gave_up",
            extra={
                "kind": message.kind,
                "message_id": message.id,
                "attempts": message.attempts,
                "error": error,
            },
        )

    async def _sample_pending(self) -> None:
        """The pending gauge, at most once a second (one count per round would be wasteful)."""
        if time.monotonic() - self._sampled_at < 1.0:
            return
        self._sampled_at = time.monotonic()
        async with autocommit_connection(self._engine) as conn:
            pending = await repository.count_pending(conn)
        for kind in self._senders:
            OUTBOX_PENDING.labels(kind).set(pending.get(kind, 0))

    async def _prune(self) -> None:
        if time.monotonic() - self._pruned_at < _PRUNE_EVERY:
            return
        self._pruned_at = time.monotonic()
        async with autocommit_connection(self._engine) as conn:
            deleted = await repository.delete_finished(
                conn, before=self._clock.now() - FINISHED_RETENTION
            )
        logger.info("outbox.pruned", extra={"deleted": deleted})


def _log_failure(exc: BaseException, retry_in: float) -> None:
    extra = {"error_type": type(exc).__name__, "retry_in": round(retry_in, 2)}
    if is_database_unavailable(exc):
        logger.warning("outbox.db_unavailable", extra=extra)
    else:
        logger.error("outbox.failed", extra=extra, exc_info=exc)
