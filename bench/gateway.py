"""The shipped nginx recipe (deploy/nginx/authsvc.conf) in front of a benchmarked service: real
nginx (Debian's package), one worker process, the recipe's own directives with only the
addresses (and, when asked, the in-flight limit) changed."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "deploy/nginx/authsvc.conf"
LIMIT_LINE = "limit_conn authsvc_in_flight 16;"


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():  # not on a non-root PATH
        found = "/usr/sbin/nginx"
    return found


def render(recipe: str, listen: int, services: Sequence[str], limit: int | None) -> str:
    """The recipe listening on `listen`, its authsvc upstream naming `services` (one `server`
    line each, with the recipe's parameters) and, when given, another in-flight limit (the
    tests of deploy/nginx render it with this too)."""
    line = re.search(r"^ *server 127\.0\.0\.1:8000\b.*$", recipe, re.MULTILINE)
    assert line is not None, "the recipe's authsvc server line moved"  # noqa: S101
    replicas = "\n".join(
        line[0].replace("127.0.0.1:8000", s.removeprefix("http://")) for s in services
    )
    site = recipe.replace(line[0], replicas).replace(
        "listen 127.0.0.1:8080;", f"listen 127.0.0.1:{listen};"
    )
    if limit is not None:
        assert LIMIT_LINE in site, "the recipe's in-flight limit moved"  # noqa: S101
        site = site.replace(LIMIT_LINE, f"limit_conn authsvc_in_flight {limit};")
    return site


def main_conf(prefix: Path, include: Path) -> str:
    """A whole nginx.conf around the recipe: one worker, everything under `prefix` (the tests
    of deploy/nginx use it too)."""
    return f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {include};
}}
"""


@contextlib.contextmanager
def nginx_in_front(
    service: str | Sequence[str], listen: int, limit: int | None = None
) -> Iterator[str]:
    """nginx with the recipe, proxying to `service` (several: the recipe's upstream with one
    `server` line each, round robin); yields the gateway's URL."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx not found: apt-get install -y nginx")
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as folder:
        prefix = Path(folder)
        site = prefix / "authsvc.conf"
        services = [service] if isinstance(service, str) else list(service)
        site.write_text(render(RECIPE.read_text(), listen, services, limit))
        conf = prefix / "nginx.conf"
        conf.write_text(main_conf(prefix, site))
        command = [binary, "-p", str(prefix), "-c", str(conf)]
        subprocess.run([*command, "-t"], check=True, capture_output=True)
        process = subprocess.Popen(
            [*command, "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        gateway = f"http://127.0.0.1:{listen}"
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    httpx.get(f"{gateway}/.well-known/jwks.json", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            yield gateway
        finally:
            process.terminate()
            process.wait(timeout=10)
