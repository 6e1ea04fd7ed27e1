"""Password hashing stays off the event loop and behind request handling (issue 8)."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from app.core.security import PasswordHasher, default_hash_threads
from app.core.settings import PasswordHashProfile

PASSWORD = "correct horse battery staple"


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX thread priorities")
async def test_hashes_run_on_their_own_lower_priority_threads() -> None:
    before = set(threading.enumerate())
    hasher = PasswordHasher(threads=1)
    try:
        stored = await hasher.hash(PASSWORD)
        assert (await hasher.verify_and_update(PASSWORD, stored)) == (True, None)

        # The threads that ran them, as any process listing shows them (named, niced).
        started = set(threading.enumerate()) - before
        [thread] = [t for t in started if t.name.startswith("password-hash")]
        assert thread.native_id is not None
        assert thread.native_id != threading.get_native_id()
        nice = os.getpriority(os.PRIO_PROCESS, thread.native_id)
        loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert nice >= loop_nice + 10 or nice == 19
    finally:
        hasher.close()


async def test_the_event_loop_keeps_running_while_hashes_are_computed() -> None:
    hasher = PasswordHasher(threads=2)
    try:
        stored = await hasher.hash(PASSWORD)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        task = asyncio.create_task(ticker())
        await asyncio.gather(*(hasher.verify_and_update(PASSWORD, stored) for _ in range(6)))
        task.cancel()
        assert ticks >= 5  # the loop was never blocked for the whole batch
    finally:
        hasher.close()


def test_hash_threads_default_to_this_workers_share_of_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    assert default_hash_threads() == 2
    monkeypatch.setenv("WEB_CONCURRENCY", "16")
    assert default_hash_threads() == 1  # never zero
    monkeypatch.delenv("WEB_CONCURRENCY")
    assert default_hash_threads() == 8


async def test_profile_sets_the_costs_of_new_hashes_and_others_are_upgraded() -> None:
    """The test profile's hashes are cheap and verify everywhere; the OWASP profile (the
    default) replaces them, and its own hashes stay as they are."""
    owasp = PasswordHasher(threads=1)
    cheap = PasswordHasher(threads=1, profile=PasswordHashProfile.test)
    try:
        assert owasp.profile is PasswordHashProfile.owasp
        weak = await cheap.hash(PASSWORD)
        strong = await owasp.hash(PASSWORD)
        assert weak.startswith("$argon2id$v=19$m=8,t=1,p=1$")
        assert strong.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert await cheap.verify_and_update(PASSWORD, weak) == (True, None)
        valid, upgraded = await owasp.verify_and_update(PASSWORD, weak)
        assert valid
        assert upgraded is not None
        assert upgraded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert await owasp.verify_and_update(PASSWORD, strong) == (True, None)
        assert await owasp.verify_and_update("wrong password", weak) == (False, None)
    finally:
        owasp.close()
        cheap.close()
