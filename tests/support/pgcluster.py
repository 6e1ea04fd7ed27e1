"""A private PostgreSQL cluster for one test: initdb into a temp dir, pg_ctl start and stop.

For tests that stop the database server mid-test (outages, restarts). They must never touch the
machine's shared server, which every other test uses: this one lives in its own temp directory,
on its own free port, with its Unix socket in that directory, and is removed afterwards.

As root (CI containers) initdb refuses to run, so the cluster is created and run as the
`postgres` OS user through `runuser`; as anyone else it runs as that user.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import free_port

CLUSTER_USER = "postgres"  # OS user when running as root, and the database superuser


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's binaries (Debian layout), or None if there are none."""
    candidates = [
        path.parent
        for path in Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")
        if (path.parent / "initdb").exists()
    ]
    if not candidates:
        return None

    def major(bin_dir: Path) -> tuple[int, str]:
        name = bin_dir.parent.name
        return (int(name), name) if name.isdigit() else (0, name)

    return max(candidates, key=major)


def _as_cluster_user(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    if runuser is not None:
        return [runuser, "-u", CLUSTER_USER, "--", *argv]
    return ["su", CLUSTER_USER, "-s", "/bin/sh", "-c", shlex.join(argv)]  # pragma: no cover


def _run(argv: list[str], *, timeout: float = 60) -> None:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd="/"
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"{Path(argv[0]).name} failed ({result.returncode}): {result.stderr[-2000:]}"
        )


@dataclass
class PgCluster:
    """A running (or stopped) private cluster with one application database."""

    bin_dir: Path
    root: Path
    port: int
    database: str

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{CLUSTER_USER}@127.0.0.1:{self.port}/{self.database}"

    def admin_url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://{CLUSTER_USER}@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str, timeout: float = 60) -> None:
        argv = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args]
        _run(_as_cluster_user(argv), timeout=timeout)

    def start(self) -> None:
        """Start the server and wait until it accepts connections (blocking)."""
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.root} -c fsync=off "
            "-c max_connections=50 -c shared_buffers=16MB"
        )
        self._ctl("start", "-w", "-t", "60", "-l", str(self.log_file), "-o", options)

    def stop(self, mode: str = "fast", *, wait: bool = True) -> None:
        """Stop the server. fast (the default): clients are disconnected, open transactions
        abort; immediate: every process quits without a checkpoint (the next start recovers
        from a crash); smart: new connections are refused while existing sessions go on, and
        the server stops only when they have all ended (`wait=False` returns at once)."""
        self._ctl("stop", "-w" if wait else "-W", "-t", "60", "-m", mode)

    def server_pids(self) -> list[int]:
        """The postmaster and every process it started (backends, checkpointer, ...)."""
        postmaster = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        children = subprocess.run(
            ["ps", "-o", "pid=", "--ppid", str(postmaster)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        return [postmaster, *map(int, children)]

    def freeze(self) -> list[int]:
        """SIGSTOP the whole server: connections stay open and nothing answers (a hung host).
        Returns the stopped processes, for `thaw`."""
        pids = self.server_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    @staticmethod
    def thaw(pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def is_running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def create_database(self, name: str) -> str:
        """Another empty database on this cluster; returns its URL."""
        argv = [
            str(self.bin_dir / "createdb"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            CLUSTER_USER,
            name,
        ]
        _run(argv)
        return self.admin_url(name)


@contextlib.contextmanager
def private_postgres(database: str = "authsvc") -> Iterator[PgCluster]:
    """initdb a fresh cluster, start it on a free port, create `database`; always clean up.

    Start and stop are blocking: from async tests call them with `asyncio.to_thread`.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("no PostgreSQL binaries under /usr/lib/postgresql/*/bin")
    # Not under pytest's tmp_path: its parents are private to root, and the postgres OS user
    # must be able to reach the data directory.
    root = Path(tempfile.mkdtemp(prefix="authsvc-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(root, user=CLUSTER_USER, group=CLUSTER_USER)
        cluster = PgCluster(bin_dir=bin_dir, root=root, port=free_port(), database=database)
        initdb = [
            str(bin_dir / "initdb"),
            "-D",
            str(cluster.data_dir),
            "-U",
            CLUSTER_USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]
        _run(_as_cluster_user(initdb))
        try:
            cluster.start()
            cluster.create_database(database)
            yield cluster
        finally:
            if cluster.is_running():
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    cluster._ctl("stop", "-w", "-t", "30", "-m", "immediate")
    finally:
        shutil.rmtree(root, ignore_errors=True)
