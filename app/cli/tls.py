"""`serve --dev-tls`: a self-signed certificate for https://localhost in development.

WebKit (Safari's engine; WebKitGTK 2.50 on Linux) drops every `Secure` cookie on
http://localhost (WebKit bug 281149), so browser mode works there only over HTTPS. The
certificate is made once and reused, so a browser told to trust it keeps trusting it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.core.settings import PROJECT_ROOT

DEV_TLS_DIR = PROJECT_ROOT / "data" / "dev-tls"
DNS_NAMES = ("localhost",)
IP_ADDRESSES = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))
VALIDITY = datetime.timedelta(days=365)
# A certificate this close to its end is made anew rather than reused for a day's work.
RENEW_BEFORE = datetime.timedelta(days=7)


@dataclass(frozen=True)
class DevCertificate:
    certfile: Path
    keyfile: Path
    created: bool  # False: an earlier one was reused


def dev_certificate(
    folder: Path = DEV_TLS_DIR, *, now: datetime.datetime | None = None
) -> DevCertificate:
    """The development certificate in `folder`, made (or remade) when missing, unreadable,
    about to expire or not naming every local address."""
    now = now or datetime.datetime.now(datetime.UTC)
    certfile, keyfile = folder / "localhost.crt", folder / "localhost.key"
    if _reusable(certfile, keyfile, now):
        return DevCertificate(certfile, keyfile, created=False)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    _write_private(
        keyfile,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    certfile.write_bytes(_certificate(key, now).public_bytes(serialization.Encoding.PEM))
    return DevCertificate(certfile, keyfile, created=True)


def _certificate(key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "authsvc development (localhost)")])
    names: list[x509.GeneralName] = [x509.DNSName(dns) for dns in DNS_NAMES]
    names += [x509.IPAddress(ip) for ip in IP_ADDRESSES]
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a clock a little behind
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )


def _write_private(path: Path, data: bytes) -> None:
    """The key is readable by its owner only, from the moment it exists."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def _reusable(certfile: Path, keyfile: Path, now: datetime.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(certfile.read_bytes())
        key = serialization.load_pem_private_key(keyfile.read_bytes(), password=None)
    except (OSError, ValueError):
        return False
    if cert.public_key() != key.public_key():
        return False
    if cert.not_valid_after_utc - RENEW_BEFORE < now:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(DNS_NAMES) <= set(san.get_values_for_type(x509.DNSName)) and set(
        IP_ADDRESSES
    ) <= set(san.get_values_for_type(x509.IPAddress))
