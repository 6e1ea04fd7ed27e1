"""Review of issue 18 (DPoP): an RSA proof key with a modulus-sized public exponent.

fac0c55 bounds the modulus (>= 2048 bits) but not the exponent. With e as long as n, each
check of such a proof is a full-size modular exponentiation: ~9.5 ms for n = 3072 bits against
~0.1 ms for e = 65537 (OpenSSL caps e at 64 bits only above 3072-bit moduli), synchronous on
the event loop, and at /auth/token before any rate limit (test_token_endpoint_cost.py). The
header cache makes repeating it free for the sender; the signature need not even be valid.
The proof below is validly signed, and accepted today. Fix: refuse e != 65537 (what every
WebCrypto / JOSE library makes; or at least e < 2**32), and cap n (e.g. 4096 bits)."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import secrets
import time
import uuid
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import PASSWORD, Harness, error_code
from tests.dpop.test_routes import ORIGIN

_SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _int_b64(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _claims(h: Harness) -> dict[str, Any]:
    return {
        "jti": uuid.uuid4().hex,
        "htm": "POST",
        "htu": ORIGIN + "/auth/login",
        "iat": int(h.clock.now().timestamp()),
    }


def _rs256_proof(h: Harness, *, bits: int, huge_exponent: bool) -> str:
    """An RS256 proof by a raw RSA key (n, e, d): PKCS #1 v1.5 by hand, as cryptography
    refuses to build a private key with such an e."""
    numbers = rsa.generate_private_key(65537, bits).private_numbers()
    p, q = numbers.p, numbers.q
    n, phi = p * q, (p - 1) * (q - 1)
    e = 65537
    if huge_exponent:
        while True:
            e = secrets.randbits(bits - 1) | (1 << (bits - 2)) | 1
            if math.gcd(e, phi) == 1:
                break
    d = pow(e, -1, phi)
    jwk = {"kty": "RSA", "n": _int_b64(n), "e": _int_b64(e)}
    head = _b64(json.dumps({"typ": "dpop+jwt", "alg": "RS256", "jwk": jwk}).encode())
    body = _b64(json.dumps(_claims(h)).encode())
    k = (n.bit_length() + 7) // 8
    t = _SHA256_DIGEST_INFO + hashlib.sha256(f"{head}.{body}".encode()).digest()
    em = b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t
    signature = pow(int.from_bytes(em, "big"), d, n).to_bytes(k, "big")
    return f"{head}.{body}.{_b64(signature)}"


async def _login(h: Harness, proof: str) -> Any:
    email = await h.create_user()
    return await h.client.post(
        "/auth/login", json={"email": email, "password": PASSWORD}, headers={"DPoP": proof}
    )


async def test_an_rsa_key_with_a_modulus_sized_exponent_is_refused(harness: Harness) -> None:
    proof = _rs256_proof(harness, bits=3072, huge_exponent=True)
    started = time.perf_counter()
    response = await _login(harness, proof)
    elapsed = time.perf_counter() - started
    assert response.status_code == 400, (response.text[:80], elapsed)
    assert error_code(response) == "invalid_dpop_proof"
