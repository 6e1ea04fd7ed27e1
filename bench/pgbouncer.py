"""A private PgBouncer (Debian's `pgbouncer`) in transaction pooling mode in front of a
PostgreSQL, for the benchmarks and the tests (tests/support/pgbouncer.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import make_url

from bench.processes import free_port, stop_process

BINARY = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def through(url: str, port: int) -> str:
    """`url` (a PostgreSQL URL) with PgBouncer's address instead of PostgreSQL's."""
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


def _config(folder: Path, port: int, upstream: str, server_connections: int) -> str:
    """docs/scaling.md's settings. server_login_retry: after a failed server login PgBouncer
    refuses every client and tries the server again only after this long (15 s by default)."""
    target = make_url(upstream)
    return f"""[databases]
* = host={target.host or "127.0.0.1"} port={target.port or 5432}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
pool_mode = transaction
default_pool_size = {server_connections}
max_client_conn = 1000
server_login_retry = 2
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
"""


@contextlib.contextmanager
def pgbouncer(upstream: str, server_connections: int) -> Iterator[int]:
    """PgBouncer in front of the PostgreSQL `upstream` names, lending it at most
    `server_connections` per database and user; yields its port."""
    if not Path(BINARY).exists():
        raise RuntimeError("pgbouncer is not installed (apt-get install -y pgbouncer)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="pgbouncer-") as name:
        folder = Path(name)
        user = make_url(upstream).username or "postgres"
        (folder / "users.txt").write_text(f'"{user}" ""\n')
        (folder / "pgbouncer.ini").write_text(_config(folder, port, upstream, server_connections))
        command = [BINARY, str(folder / "pgbouncer.ini")]
        if os.geteuid() == 0:  # it refuses to run as root: it drops to the postgres user
            folder.chmod(0o777)
            command[1:1] = ["-u", "postgres"]
        # It logs to its logfile and to stderr: stderr into the folder too, never a pipe
        # (bench.processes.output_file says why).
        with (folder / "stderr.log").open("wb") as stderr:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            _wait_listening(port, process, folder)
            yield port
        finally:
            stop_process(process)


def _wait_listening(port: int, process: subprocess.Popen[bytes], folder: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            log = folder / "pgbouncer.log"
            detail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"pgbouncer exited with {process.returncode}: {detail}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("pgbouncer did not start listening")
        time.sleep(0.05)
