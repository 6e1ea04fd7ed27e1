"""A private redis-server for tests that break Redis (kill it, freeze it): never the shared one."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from tests.support.servers import free_port


@dataclass
class PrivateRedis:
    port: int
    folder: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            # No persistence: a restart starts empty, as a fresh Redis would.
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no", "--dir", self.folder],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_listening(self.port, self.process)

    def kill(self) -> None:
        """Redis down: the port refuses connections."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def freeze(self) -> None:
        """Redis frozen: connections are accepted by the kernel, nothing ever answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def keys(self) -> list[str]:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), "--scan"],
            capture_output=True,
            check=True,
            timeout=5,
        )
        return out.stdout.decode().split()


def _wait_listening(port: int, process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    folder = tempfile.mkdtemp(prefix="redis-")
    redis = PrivateRedis(port=free_port(), folder=folder)
    redis.start()
    try:
        yield redis
    finally:
        if redis.process is not None:
            redis.thaw()  # a stopped process would ignore nothing, but let it exit cleanly
        redis.kill()
        shutil.rmtree(folder, ignore_errors=True)
