"""Password hashing stays off the event loop and behind request handling (issue 8)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading

import pytest

from app.core.security import PasswordHasher, default_hash_threads, hashing_niceness
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


_NICE_OF_HASHING_THREAD = """
import asyncio, os, threading
from app.core.security import PasswordHasher

async def main():
    hasher = PasswordHasher(threads=1)
    await hasher.hash("correct horse battery staple")
    [t] = [t for t in threading.enumerate() if t.name.startswith("password-hash")]
    print(os.getpriority(os.PRIO_PROCESS, 0), os.getpriority(os.PRIO_PROCESS, t.native_id))
    hasher.close()

asyncio.run(main())
"""


@pytest.mark.skipif(shutil.which("nice") is None, reason="needs nice(1)")
@pytest.mark.parametrize("started_at", [5, 12])
def test_hashing_stays_below_a_process_started_under_nice(started_at: int) -> None:
    # An absolute nice 10 put hashing above a process started at 5, and left it level with
    # one started at 12 (lowering a thread to 10 from there is not permitted).
    base = os.getpriority(os.PRIO_PROCESS, 0)
    result = subprocess.run(
        ["nice", "-n", str(started_at), sys.executable, "-c", _NICE_OF_HASHING_THREAD],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    process_nice, thread_nice = map(int, result.stdout.split())
    assert process_nice == min(base + started_at, 19)
    assert thread_nice == hashing_niceness(process_nice) == min(process_nice + 10, 19)


def test_hashing_niceness_is_relative_and_capped() -> None:
    assert [hashing_niceness(n) for n in (-5, 0, 5, 9, 10, 19)] == [5, 10, 15, 19, 19, 19]


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
