"""`python -m app serve` over HTTPS: a given certificate and key, or `--dev-tls`'s own
self-signed one for localhost (WebKit keeps `Secure` cookies only over HTTPS)."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from app.cli.tls import dev_certificate
from tests.conftest import PASSWORD, TEST_SECRET
from tests.support.servers import ROOT, free_port, wait_listening

pytestmark = pytest.mark.slow


def _env(tmp_path: Path, environment: str, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("JWT_ISSUER", "DATABASE_URL", "ENVIRONMENT")
    }
    return {
        **env,
        "ENVIRONMENT": environment,
        "SECRET_KEY": TEST_SECRET,
        "DATABASE_URL": f"sqlite:///{tmp_path}/auth.db",
        "LOG_FORMAT": "console",
        "PASSWORD_HASH_PROFILE": "test",
        **extra,
    }


def _serve(
    tmp_path: Path, *args: str, environment: str = "test", **env: str
) -> subprocess.CompletedProcess[str]:
    """A `serve` that is expected to stop by itself (refused before it starts)."""
    return subprocess.run(
        [sys.executable, "-m", "app", "serve", "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        env=_env(tmp_path, environment, **env),
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def _trusting(certfile: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certfile))


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[str], list[str]]]:
    """`serve --dev-tls` in development, its certificate under tmp_path/tls."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port), "--dev-tls"]
        + ["--dev-tls-dir", str(tmp_path / "tls")],
        env=_env(tmp_path, "development"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    try:
        assert process.stderr is not None
        give_up = time.monotonic() + 30
        while time.monotonic() < give_up:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if "Application startup complete" in line:
                break
        assert any("Application startup complete" in line for line in lines), lines
        wait_listening(port, give_up)
        yield port, process, lines
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_dev_tls_serves_https_for_localhost_and_127_0_0_1(
    tmp_path: Path, running: tuple[int, subprocess.Popen[str], list[str]]
) -> None:
    port, _, lines = running
    certfile = tmp_path / "tls" / "localhost.crt"
    trust = _trusting(certfile)
    for host in ("localhost", "127.0.0.1"):  # both names are in the certificate
        answer = httpx.get(f"https://{host}:{port}/healthz", verify=trust, timeout=5)
        assert answer.status_code == 200
    # The issuer a development server names itself is where it listens: over HTTPS.
    doc = httpx.get(
        f"https://127.0.0.1:{port}/.well-known/oauth-authorization-server", verify=trust
    ).json()
    assert doc["issuer"] == f"https://127.0.0.1:{port}"
    # Plain HTTP is not served on the same port.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    # A client that does not trust the certificate is refused: it is self-signed.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://localhost:{port}/healthz", timeout=5)
    output = "\n".join(lines)
    assert f"authsvc listens on https://127.0.0.1:{port}" in output, output
    assert str(certfile) in output


def test_given_certificate_and_key_serve_https_with_secure_cookies(
    tmp_path: Path, database_url: str
) -> None:
    made = dev_certificate(tmp_path / "mine")  # any PEM pair; this one names localhost
    port = free_port()
    env = _env(tmp_path, "test", JWT_ISSUER="https://auth.test", DATABASE_URL=database_url)
    email = f"tls-{uuid.uuid4().hex[:8]}@example.com"
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)]
        + ["--ssl-certfile", str(made.certfile), "--ssl-keyfile", str(made.keyfile)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        trust = _trusting(made.certfile)
        give_up = time.monotonic() + 30
        while True:
            assert process.poll() is None, "serve exited"
            try:
                answer = httpx.get(f"https://localhost:{port}/healthz", verify=trust, timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < give_up, "no HTTPS answer"
                time.sleep(0.2)
        assert answer.status_code == 200
        # Browser mode's cookies over HTTPS: the refresh cookie is Secure.
        created = subprocess.run(
            [sys.executable, "-m", "app", "users", "create", email],
            input=PASSWORD + "\n",
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stderr
        login = httpx.post(
            f"https://localhost:{port}/auth/login",
            json={"email": email, "password": PASSWORD},
            headers={"Session-Transport": "cookie", "Origin": f"https://localhost:{port}"},
            verify=trust,
        )
        assert login.status_code == 200, login.text
        cookies = login.headers.get_list("set-cookie")
        assert any(c.startswith("__Secure-refresh_token=") and "Secure" in c for c in cookies)
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.mark.parametrize(
    ("args", "environment", "says"),
    [
        (["--dev-tls"], "production", "--dev-tls in production"),
        (["--ssl-certfile", "x.crt"], "test", "--ssl-certfile and --ssl-keyfile go together"),
        (["--ssl-keyfile", "x.key"], "test", "--ssl-certfile and --ssl-keyfile go together"),
        (["--dev-tls", "--ssl-certfile", "a", "--ssl-keyfile", "b"], "test", "drop --ssl"),
        (["--ssl-certfile", "nope.crt", "--ssl-keyfile", "nope.key"], "test", "cannot serve"),
    ],
    ids=["dev-tls-in-production", "cert-alone", "key-alone", "both-kinds", "missing-files"],
)
def test_tls_misconfigurations_are_one_line_before_anything_starts(
    tmp_path: Path, args: list[str], environment: str, says: str
) -> None:
    production = {
        "JWT_ISSUER": "https://auth.test",
        "METRICS_TOKEN": "m" * 32,
        "PASSWORD_HASH_PROFILE": "owasp",
    }
    result = _serve(
        tmp_path,
        *args,
        "--dev-tls-dir",
        str(tmp_path / "tls"),
        environment=environment,
        **(production if environment == "production" else {}),
    )
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "error" in line]
    assert line.startswith("configuration error: "), line
    assert says in line, line
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "auth.db").exists()  # refused before migrating
    assert not (tmp_path / "tls").exists()  # and before making a certificate


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    one, other = dev_certificate(tmp_path / "one"), dev_certificate(tmp_path / "other")
    result = _serve(
        tmp_path, "--ssl-certfile", str(one.certfile), "--ssl-keyfile", str(other.keyfile)
    )
    assert result.returncode == 2
    assert "configuration error: --ssl-certfile/--ssl-keyfile: cannot serve" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_dev_certificate_names_localhost_and_is_made_once(tmp_path: Path) -> None:
    first = dev_certificate(tmp_path)
    assert first.created
    cert = x509.load_pem_x509_certificate(first.certfile.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }
    assert stat.S_IMODE(first.keyfile.stat().st_mode) == 0o600  # the key is the owner's only
    pem = first.certfile.read_bytes()
    again = dev_certificate(tmp_path)
    assert not again.created
    assert again.certfile.read_bytes() == pem  # reused: a browser that trusts it keeps doing so


def test_the_dev_certificate_is_made_anew_when_expiring_or_broken(tmp_path: Path) -> None:
    pem = dev_certificate(tmp_path).certfile.read_bytes()
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=360)
    renewed = dev_certificate(tmp_path, now=later)
    assert renewed.created
    assert renewed.certfile.read_bytes() != pem
    renewed.keyfile.write_text("not a key")
    assert dev_certificate(tmp_path).created
    other = dev_certificate(tmp_path / "other")
    (tmp_path / "localhost.key").write_bytes(other.keyfile.read_bytes())  # a foreign key
    assert dev_certificate(tmp_path).created
