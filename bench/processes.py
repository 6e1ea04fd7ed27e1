"""Processes a benchmark or a test starts: a free port to give one, where its output goes,
and a way to stop one."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from typing import IO


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """Terminate (kill after `timeout`) a process, and close its stderr."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stderr:
        process.stderr.close()


def output_file() -> IO[bytes]:
    """Where a started process's stderr goes: an unnamed temporary file, never a pipe. A pipe
    nobody reads fills after 64 KiB and then blocks the process at its next log line, for
    good: in a soak, PgBouncer and the replicas froze that way after a minute of an outage's
    log lines."""
    return tempfile.TemporaryFile()


def output_tail(output: IO[bytes], size: int = 2000) -> str:
    """The last `size` bytes a process wrote to its `output_file`."""
    output.flush()
    end = output.seek(0, os.SEEK_END)
    output.seek(max(0, end - size))
    return output.read().decode(errors="replace")
