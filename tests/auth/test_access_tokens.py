"""Checklist A1-A13: access token verification, black-box through the real app.

Every forged token differs from a genuine one in exactly the aspect under test: it carries the real
session id (sid) and user id (sub) of a live login, our issuer and audience, our `kid` and
`typ: at+jwt`, unless that is the thing being attacked. A baseline test proves that a token built by
the same helpers, signed with the real key, is accepted, so every 401 below is caused by the attack
and not by a broken helper. Runs on SQLite and PostgreSQL (the `harness` fixture), except the
attacks that token verification refuses before any session read (`shared_login`): the engine
cannot change their answer, so they run once, on SQLite, against one app and one login.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, get_default_algorithms

from tests.conftest import Harness, bearer, error_code, make_settings, start_harness

ME = "/auth/me"
ISSUER = "https://auth.test"
AUDIENCE = "authsvc-test"
LEEWAY = 30
TTL = 300
# Order n of the P-256 group: (r, s) and (r, n - s) are both valid ECDSA signatures.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
B64URL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
DROP = object()  # a claim/header value meaning "remove this member"


# --------------------------------------------------------------------------------------------
# Token building blocks (no app code involved)
# --------------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def b64url_json(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def signing_input(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64url_json(header)}.{b64url_json(claims)}"


def sign_jws(header: dict[str, Any], claims: dict[str, Any], key: Any, alg: str) -> str:
    """A compact JWS, header written verbatim (PyJWT's encoder would add or check members)."""
    message = signing_input(header, claims)
    signature = get_default_algorithms()[alg].sign(message.encode(), key)
    return f"{message}.{b64url(signature)}"


def hmac_jws(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """HS256 by hand: PyJWT itself refuses PEM/SSH/JWK material as an HMAC secret."""
    message = signing_input(header, claims)
    signature = hmac.new(secret, message.encode(), hashlib.sha256).digest()
    return f"{message}.{b64url(signature)}"


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return f"{signing_input(header, claims)}.{b64url(signature)}"


def changed(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    result = dict(base)
    for name, value in changes.items():
        if value is DROP:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert error_code(response) == code, response.text


@dataclass
class Login:
    """A live login plus everything needed to mint tokens that look like its own."""

    harness: Harness
    access_token: str
    refresh_token: str
    claims: dict[str, Any]
    kid: str
    private_key: ec.EllipticCurvePrivateKey
    public_key: ec.EllipticCurvePublicKey
    jwk: dict[str, Any] = field(default_factory=dict)

    @property
    def now(self) -> int:
        return int(self.harness.clock.now().timestamp())

    def header(self, **changes: Any) -> dict[str, Any]:
        return changed({"alg": "ES256", "kid": self.kid, "typ": "at+jwt"}, **changes)

    def payload(self, **changes: Any) -> dict[str, Any]:
        """The login's own claims with a fresh jti and times relative to the frozen clock."""
        now = self.now
        base = dict(self.claims, jti=uuid.uuid4().hex, iat=now, nbf=now, exp=now + TTL)
        return changed(base, **changes)

    def sign(
        self, header: dict[str, Any] | None = None, claims: dict[str, Any] | None = None
    ) -> str:
        return sign_jws(
            header if header is not None else self.header(),
            claims if claims is not None else self.payload(),
            self.private_key,
            "ES256",
        )

    async def get(self, token: str, path: str = ME) -> httpx.Response:
        return await self.harness.client.get(path, headers=bearer(token))


@pytest.fixture
async def login(harness: Harness) -> Login:
    return await _logged_in(harness)


@pytest.fixture(scope="module")
async def shared_login(sqlite_url: str) -> AsyncIterator[Login]:
    """For attacks that token verification refuses before any session read (signature,
    algorithm, kid, claims): neither the database engine nor another test's requests can
    change the answer, so one app and one login serve them all (and nothing here moves the
    frozen clock)."""
    async for harness in start_harness(make_settings(sqlite_url)):
        yield await _logged_in(harness)


async def _logged_in(harness: Harness) -> Login:
    email = await harness.create_user()
    tokens = await harness.login(email)
    access = tokens["access_token"]
    claims: dict[str, Any] = jwt.decode(access, options={"verify_signature": False})
    signer = harness.ctx.keys.ring.signer
    assert signer.algorithm == "ES256"
    assert isinstance(signer.private_key, ec.EllipticCurvePrivateKey)
    assert jwt.get_unverified_header(access)["kid"] == signer.kid
    assert claims["sid"] == tokens["session"]["id"]
    return Login(
        harness=harness,
        access_token=access,
        refresh_token=tokens["refresh_token"],
        claims=claims,
        kid=signer.kid,
        private_key=signer.private_key,
        public_key=signer.private_key.public_key(),
        jwk=dict(harness.ctx.keys.ring.verifiers[signer.kid].jwk),
    )


# --------------------------------------------------------------------------------------------
# Baseline: the helpers produce tokens the app accepts
# --------------------------------------------------------------------------------------------


async def test_baseline_self_signed_token_is_accepted(login: Login) -> None:
    assert (await login.get(login.access_token)).status_code == 200
    response = await login.get(login.sign())
    assert response.status_code == 200, response.text
    assert response.json()["id"] == login.claims["sub"]


# --------------------------------------------------------------------------------------------
# A1: alg none
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_a1_alg_none_without_signature_is_rejected(shared_login: Login, alg: str) -> None:
    token = unsigned(shared_login.header(alg=alg), shared_login.payload())
    assert token.endswith(".")
    assert_error(await shared_login.get(token), 401, "invalid_token")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_a1_alg_none_without_kid_or_typ_is_rejected(shared_login: Login, alg: str) -> None:
    token = unsigned({"alg": alg}, shared_login.payload())
    assert_error(await shared_login.get(token), 401, "invalid_token")


# --------------------------------------------------------------------------------------------
# A2: HS256 keyed with our public key (algorithm confusion)
# --------------------------------------------------------------------------------------------


def _public_key_as_secret(login: Login, form: str) -> bytes:
    key = login.public_key
    if form == "pem":
        return key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    if form == "pem-stripped":
        return _public_key_as_secret(login, "pem").strip()
    if form == "der":
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    if form == "openssh":
        return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    if form == "x962-point":
        return key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    if form == "jwk-published":  # exactly as the key ring stores and would publish it
        return json.dumps(login.jwk, sort_keys=True).encode()
    if form == "jwk-compact":
        return json.dumps(login.jwk, separators=(",", ":")).encode()
    if form == "jwk-pyjwt":
        return ECAlgorithm.to_jwk(key).encode()
    raise AssertionError(form)


@pytest.mark.parametrize(
    "form",
    [
        "pem",
        "pem-stripped",
        "der",
        "openssh",
        "x962-point",
        "jwk-published",
        "jwk-compact",
        "jwk-pyjwt",
    ],
)
async def test_a2_hs256_keyed_with_our_public_key_is_rejected(
    shared_login: Login, form: str
) -> None:
    secret = _public_key_as_secret(shared_login, form)
    token = hmac_jws(shared_login.header(alg="HS256"), shared_login.payload(), secret)
    assert_error(await shared_login.get(token), 401, "invalid_token")


# --------------------------------------------------------------------------------------------
# A3: validly signed, but with an algorithm (or key) we do not accept
# --------------------------------------------------------------------------------------------


def _foreign_key(alg: str) -> Any:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "ES512":
        return ec.generate_private_key(ec.SECP521R1())
    if alg in {"RS256", "PS256"}:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise AssertionError(alg)


@pytest.mark.parametrize("alg", ["ES384", "ES512", "RS256", "PS256", "EdDSA", "ES256"])
async def test_a3_token_signed_with_a_foreign_key_and_our_kid_is_rejected(
    shared_login: Login, alg: str
) -> None:
    """ES256 here means the allowed algorithm but a key of the attacker's, under our kid."""
    key = _foreign_key(alg)
    token = sign_jws(shared_login.header(alg=alg), shared_login.payload(), key, alg)
    # The token is genuinely valid for the foreign key: only the key/algorithm is wrong.
    public = key.public_key()
    assert jwt.decode(token, public, algorithms=[alg], audience=AUDIENCE, issuer=ISSUER)
    assert_error(await shared_login.get(token), 401, "invalid_token")


# --------------------------------------------------------------------------------------------
# A4: empty and degenerate ECDSA signatures
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "signature",
    [
        pytest.param(b"", id="empty"),
        pytest.param(bytes(64), id="r=s=0"),
        pytest.param(P256_ORDER.to_bytes(32, "big") * 2, id="r=s=n"),
        pytest.param(bytes(32), id="half-length-zeros"),
        pytest.param(b"\x00" * 63 + b"\x01", id="r=0,s=1"),
    ],
)
async def test_a4_degenerate_signature_is_rejected(shared_login: Login, signature: bytes) -> None:
    token = unsigned(shared_login.header(), shared_login.payload(), signature)
    assert_error(await shared_login.get(token), 401, "invalid_token")


async def test_a4_missing_signature_segment_is_rejected(shared_login: Login) -> None:
    token = signing_input(shared_login.header(), shared_login.payload())  # only two segments
    assert_error(await shared_login.get(token), 401, "invalid_token")


# --------------------------------------------------------------------------------------------
# A5: jwk / jku / x5u / x5c must not choose the key, nor cause a fetch
# --------------------------------------------------------------------------------------------


@dataclass
class KeyServer:
    """A local HTTP server that would hand out the attacker's key; it counts connections."""

    url: str
    connections: list[str]
    served: dict[str, bytes]


@dataclass
class Attacker:
    key: ec.EllipticCurvePrivateKey
    jwk: dict[str, Any]
    cert_der: bytes


def _attacker(kid: str) -> Attacker:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": kid, "alg": "ES256", "use": "sig"})
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "auth.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return Attacker(key=key, jwk=jwk, cert_der=cert.public_bytes(serialization.Encoding.DER))


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    """Threaded, not on the test's event loop: a blocking fetch from the app would still be
    accepted (and counted) instead of deadlocking the loop."""
    connections: list[str] = []
    served: dict[str, bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's naming
            body = served.get(self.path, b"{}")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    class CountingServer(ThreadingHTTPServer):
        daemon_threads = True

        def verify_request(self, request: Any, client_address: Any) -> bool:
            connections.append(str(client_address))
            return True

    server = CountingServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ks = KeyServer(url=f"http://127.0.0.1:{port}", connections=connections, served=served)
    try:
        # Self-check: the server is reachable and counts (then reset the count).
        with httpx.Client(trust_env=False) as client:
            assert client.get(f"{ks.url}/probe").status_code == 200
        assert connections
        connections.clear()
        yield ks
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c", "jku+jwk", "x5u+x5c"])
async def test_a5_key_carrying_headers_are_rejected_without_fetching(
    shared_login: Login, key_server: KeyServer, member: str
) -> None:
    attacker = _attacker(shared_login.kid)
    served = key_server.served
    served["/jwks.json"] = json.dumps({"keys": [attacker.jwk]}).encode()
    served["/cert.pem"] = x509.load_der_x509_certificate(attacker.cert_der).public_bytes(
        serialization.Encoding.PEM
    )
    values: dict[str, Any] = {
        "jwk": attacker.jwk,
        "jku": f"{key_server.url}/jwks.json",
        "x5u": f"{key_server.url}/cert.pem",
        "x5c": [base64.b64encode(attacker.cert_der).decode()],
    }
    header = shared_login.header(**{name: values[name] for name in member.split("+")})
    token = sign_jws(header, shared_login.payload(), attacker.key, "ES256")
    assert jwt.decode(
        token, attacker.key.public_key(), algorithms=["ES256"], audience=AUDIENCE, issuer=ISSUER
    )
    assert_error(await shared_login.get(token), 401, "invalid_token")
    await asyncio.sleep(0.1)  # a fetch fired in the background would have connected by now
    assert key_server.connections == []


# --------------------------------------------------------------------------------------------
# A6: hostile kid values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kid",
    [
        pytest.param("unknown-kid-0000000000", id="unknown"),
        pytest.param("", id="empty"),
        pytest.param("../../etc/passwd", id="path-traversal"),
        pytest.param("../../../../../../dev/null", id="dev-null"),
        pytest.param("' OR 1=1 --", id="sql-or"),
        pytest.param("x'; DROP TABLE signing_keys; --", id="sql-drop"),
        pytest.param("kid\u0000nul", id="nul-byte"),
        pytest.param("k" * 2000, id="long"),
        pytest.param(123, id="int"),
        pytest.param(1.5, id="float"),
        pytest.param(True, id="bool"),
        pytest.param(None, id="null"),
        pytest.param(["kid"], id="list"),
        pytest.param({"kid": "x"}, id="object"),
    ],
)
async def test_a6_hostile_kid_is_401_never_500(shared_login: Login, kid: Any) -> None:
    token = shared_login.sign(header=shared_login.header(kid=kid))
    assert_error(await shared_login.get(token), 401, "invalid_token")


async def test_a6_our_kid_inside_a_list_or_with_suffix_is_rejected(shared_login: Login) -> None:
    for kid in (
        [shared_login.kid],
        f"{shared_login.kid} ",
        f"{shared_login.kid}/../{shared_login.kid}",
    ):
        token = shared_login.sign(header=shared_login.header(kid=kid))
        assert_error(await shared_login.get(token), 401, "invalid_token")


async def test_a6_missing_kid_is_rejected(shared_login: Login) -> None:
    token = shared_login.sign(header=shared_login.header(kid=DROP))
    assert_error(await shared_login.get(token), 401, "invalid_token")


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("abc", id="one-segment"),
        pytest.param("a.b.c", id="garbage-segments"),
        pytest.param("....", id="dots"),
        pytest.param("a.b.c.d.e", id="five-segments"),
        pytest.param(b64url(b"not json") + ".e30.", id="header-not-json"),
        pytest.param(b64url_json(["alg", "ES256"]) + ".e30.", id="header-array"),
        pytest.param(b64url_json("at+jwt") + ".e30.", id="header-string"),
        pytest.param(b64url(b"\xff\xfe{}") + ".e30.", id="header-not-utf8"),
        pytest.param("%%%.%%%.%%%", id="not-base64"),
        pytest.param("Ω.Ω.Ω", id="non-ascii"),
    ],
)
async def test_a6_malformed_token_is_401_never_500(shared_login: Login, token: str) -> None:
    headers = {b"Authorization": b"Bearer " + token.encode()}
    response = await shared_login.harness.client.get(ME, headers=headers)
    assert_error(response, 401, "invalid_token")


# --------------------------------------------------------------------------------------------
# A7: time claims and leeway (leeway 30 s, frozen clock)
# --------------------------------------------------------------------------------------------


def _times(now: int, **offsets: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"iat": now, "nbf": now, "exp": now + TTL}
    for name, value in offsets.items():
        base[name] = value if value is DROP else now + value
    return base


def _expired_since(seconds: int) -> dict[str, Any]:
    """Offsets of a token (TTL long) whose exp lies `seconds` in the past."""
    return {"iat": -TTL - seconds, "nbf": -TTL - seconds, "exp": -seconds}


def _issued_in(seconds: int) -> dict[str, Any]:
    """Offsets of a token issued `seconds` in the future (a signer whose clock runs fast)."""
    return {"iat": seconds, "nbf": seconds, "exp": seconds + TTL}


@pytest.mark.parametrize(
    ("offsets", "code"),
    [
        pytest.param(_expired_since(31), "token_expired", id="exp-31s-ago"),
        pytest.param(_expired_since(30), "token_expired", id="exp-30s-ago"),
        pytest.param(_expired_since(86400), "token_expired", id="exp-1d-ago"),
        pytest.param({"nbf": 31}, "invalid_token", id="nbf-31s-ahead"),
        pytest.param({"nbf": 3600}, "invalid_token", id="nbf-1h-ahead"),
        pytest.param({"iat": 31}, "invalid_token", id="iat-31s-ahead"),
        pytest.param(_issued_in(3600), "invalid_token", id="issued-1h-ahead"),
        pytest.param({"exp": DROP}, "invalid_token", id="exp-missing"),
    ],
)
async def test_a7_time_claims_beyond_leeway_are_rejected(
    shared_login: Login, offsets: dict[str, Any], code: str
) -> None:
    claims = changed(shared_login.payload(), **_times(shared_login.now, **offsets))
    assert_error(await shared_login.get(shared_login.sign(claims=claims)), 401, code)


@pytest.mark.parametrize(
    "exp", [pytest.param("9999999999", id="string"), pytest.param(None, id="null")]
)
async def test_a7_non_numeric_exp_is_rejected(shared_login: Login, exp: Any) -> None:
    claims = shared_login.payload(exp=exp)
    assert_error(await shared_login.get(shared_login.sign(claims=claims)), 401, "invalid_token")


@pytest.mark.parametrize(
    "offsets",
    [
        pytest.param(_expired_since(29), id="exp-29s-ago"),
        pytest.param(_expired_since(1), id="exp-1s-ago"),
        pytest.param({"nbf": 30}, id="nbf-30s-ahead"),
        pytest.param({"nbf": 1}, id="nbf-1s-ahead"),
        pytest.param({"iat": 30}, id="iat-30s-ahead"),
        pytest.param(_issued_in(30), id="issued-by-a-clock-30s-fast"),
    ],
)
async def test_a7_time_claims_within_leeway_are_accepted(
    login: Login, offsets: dict[str, Any]
) -> None:
    claims = changed(login.payload(), **_times(login.now, **offsets))
    response = await login.get(login.sign(claims=claims))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == login.claims["sub"]


@pytest.mark.parametrize(
    "lifetime",
    [
        pytest.param(10 * 365 * 86400, id="10-years"),
        pytest.param(86400, id="1-day"),
        pytest.param(TTL + LEEWAY + 1, id="ttl+leeway+1s"),
    ],
)
async def test_a7_token_living_longer_than_ttl_plus_leeway_is_rejected(
    shared_login: Login, lifetime: int
) -> None:
    """Signed with our key, but we never issue such a token: whoever minted it holds a key."""
    now = shared_login.now
    claims = shared_login.payload(iat=now, nbf=now, exp=now + lifetime)
    assert_error(await shared_login.get(shared_login.sign(claims=claims)), 401, "invalid_token")


async def test_a7_token_living_ttl_plus_leeway_is_accepted(login: Login) -> None:
    claims = login.payload(exp=login.now + TTL + LEEWAY)
    assert (await login.get(login.sign(claims=claims))).status_code == 200


async def test_a7_real_token_within_and_beyond_leeway_by_the_clock(login: Login) -> None:
    login.harness.clock.advance(TTL + LEEWAY - 1)
    assert (await login.get(login.access_token)).status_code == 200
    login.harness.clock.advance(1)
    assert_error(await login.get(login.access_token), 401, "token_expired")


# --------------------------------------------------------------------------------------------
# A8: issuer must match exactly
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "iss",
    [
        pytest.param("https://auth", id="prefix"),
        pytest.param("https://auth.tes", id="prefix-by-one"),
        pytest.param("https://auth.test.evil.example", id="superstring-host"),
        pytest.param("https://auth.test/", id="superstring-slash"),
        pytest.param("https://auth.test ", id="trailing-space"),
        pytest.param("xhttps://auth.test", id="superstring-prefix"),
        pytest.param("HTTPS://AUTH.TEST", id="case"),
        pytest.param("http://auth.test", id="scheme"),
        pytest.param("", id="empty"),
        pytest.param([ISSUER], id="list-of-ours"),
        pytest.param([ISSUER, "https://evil.example"], id="list-with-ours"),
        pytest.param({"iss": ISSUER}, id="object"),
        pytest.param(DROP, id="missing"),
    ],
)
async def test_a8_wrong_issuer_is_rejected(shared_login: Login, iss: Any) -> None:
    token = shared_login.sign(claims=shared_login.payload(iss=iss))
    assert_error(await shared_login.get(token), 401, "invalid_token")


# --------------------------------------------------------------------------------------------
# A9: audience
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "aud",
    [
        pytest.param(DROP, id="missing"),
        pytest.param("other-service", id="other"),
        pytest.param("authsvc-tes", id="prefix"),
        pytest.param("authsvc-test-admin", id="superstring"),
        pytest.param("", id="empty"),
        pytest.param([], id="empty-list"),
        pytest.param(["other-service"], id="list-of-other"),
        pytest.param({AUDIENCE: True}, id="object"),
        pytest.param(None, id="null"),
    ],
)
async def test_a9_missing_or_foreign_audience_is_rejected(shared_login: Login, aud: Any) -> None:
    token = shared_login.sign(claims=shared_login.payload(aud=aud))
    assert_error(await shared_login.get(token), 401, "invalid_token")


# --------------------------------------------------------------------------------------------
# A10: token type confusion
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typ",
    [
        pytest.param(DROP, id="missing"),
        pytest.param("JWT", id="JWT"),
        pytest.param("jwt", id="jwt"),
        pytest.param("refresh+jwt", id="refresh+jwt"),
        pytest.param("dpop+jwt", id="dpop+jwt"),
        pytest.param("id_token", id="id_token"),
        pytest.param("", id="empty"),
        pytest.param(None, id="null"),
        pytest.param(["at+jwt"], id="list"),
    ],
)
async def test_a10_wrong_typ_is_rejected(shared_login: Login, typ: Any) -> None:
    token = shared_login.sign(header=shared_login.header(typ=typ))
    assert_error(await shared_login.get(token), 401, "invalid_token")


async def test_a10_refresh_token_presented_as_access_token_is_rejected(login: Login) -> None:
    assert_error(await login.get(login.refresh_token), 401, "invalid_token")
    # It stays a working refresh token: the failed attempt did not consume or revoke it.
    assert (await login.harness.refresh(login.refresh_token)).status_code == 200


async def test_a10_access_token_presented_as_refresh_token_is_rejected(login: Login) -> None:
    response = await login.harness.refresh(login.access_token)
    assert_error(response, 401, "refresh_token_invalid")
    # And the session is untouched.
    assert (await login.get(login.access_token)).status_code == 200


# --------------------------------------------------------------------------------------------
# A11: crit
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"crit": ["x-unknown"], "x-unknown": True}, id="unknown-extension"),
        pytest.param({"crit": ["x-unknown"]}, id="unknown-extension-absent"),
        pytest.param({"crit": ["exp"], "exp": 0}, id="registered-name"),
        pytest.param({"crit": []}, id="empty-list"),
        pytest.param({"crit": "x-unknown", "x-unknown": 1}, id="not-a-list"),
        pytest.param({"crit": ["b64"], "b64": True}, id="b64-true"),
    ],
)
async def test_a11_crit_with_unknown_extension_is_rejected(
    shared_login: Login, extra: dict[str, Any]
) -> None:
    token = shared_login.sign(header=shared_login.header(**extra))
    assert_error(await shared_login.get(token), 401, "invalid_token")


# --------------------------------------------------------------------------------------------
# A12: logout revokes the session, whatever the token's bytes
# --------------------------------------------------------------------------------------------


def _split_signature(token: str) -> tuple[str, int, int]:
    message, _, sig = token.rpartition(".")
    raw = b64url_decode(sig)
    assert len(raw) == 64
    return message, int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")


def _with_signature(message: str, r: int, s: int) -> str:
    return f"{message}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _malleated(login: Login, token: str) -> str:
    """(r, s) -> (r, n - s): a different token string carrying a still-valid signature."""
    message, r, s = _split_signature(token)
    other = _with_signature(message, r, P256_ORDER - s)
    assert other != token
    _, r2, s2 = _split_signature(other)
    login.public_key.verify(
        encode_dss_signature(r2, s2), message.encode(), ec.ECDSA(hashes.SHA256())
    )
    return other


async def _logout(login: Login) -> None:
    response = await login.harness.client.post("/auth/logout", headers=bearer(login.access_token))
    assert response.status_code == 204, response.text


async def test_a12_same_token_after_logout_is_revoked(login: Login) -> None:
    await _logout(login)
    assert_error(await login.get(login.access_token), 401, "session_revoked")


async def test_a12_malleated_signature_after_logout_is_revoked(login: Login) -> None:
    twin = _malleated(login, login.access_token)
    await _logout(login)
    assert_error(await login.get(twin), 401, "session_revoked")
    assert_error(await login.get(login.access_token), 401, "session_revoked")


async def test_a12_fresh_token_for_the_revoked_session_is_revoked(login: Login) -> None:
    """A different token (new jti, new iat, new signature) for the same sid: still revoked."""
    await _logout(login)
    login.harness.clock.advance(5)
    token = login.sign()
    assert_error(await login.get(token), 401, "session_revoked")
    assert_error(await login.get(_malleated(login, token)), 401, "session_revoked")


def _encoding_variants(token: str) -> dict[str, str]:
    """Other spellings of the same signature bytes that lenient base64 decoders accept."""
    message, _, sig = token.rpartition(".")
    last = B64URL_ALPHABET.index(sig[-1])
    # 64 bytes -> 86 characters: the last one carries 2 unused bits.
    flipped = sig[:-1] + B64URL_ALPHABET[last ^ 0b01]
    assert b64url_decode(flipped) == b64url_decode(sig)
    return {
        "padded": f"{message}.{sig}==",
        "unused-bits": f"{message}.{flipped}",
    }


async def test_a12_other_signature_encodings_after_logout_are_rejected(login: Login) -> None:
    """Any spelling the app accepts before logout must be refused after it, as revoked."""
    variants = _encoding_variants(login.access_token)
    before = {name: await login.get(token) for name, token in variants.items()}
    await _logout(login)
    for name, token in variants.items():
        after = await login.get(token)
        expected = "session_revoked" if before[name].status_code == 200 else "invalid_token"
        if before[name].status_code != 200:
            assert_error(before[name], 401, "invalid_token")
        assert after.status_code == 401, (name, after.text)
        assert error_code(after) == expected, (name, after.text)


async def test_a12_logout_does_not_revoke_other_sessions(login: Login) -> None:
    other = await login.harness.login(await login.harness.create_user())
    await _logout(login)
    response = await login.harness.client.get(ME, headers=bearer(other["access_token"]))
    assert response.status_code == 200


# --------------------------------------------------------------------------------------------
# A13: oversized tokens and headers
# --------------------------------------------------------------------------------------------


def _big_jwt(login: Login, size: int) -> str:
    claims = login.payload(pad="x" * size)
    return login.sign(claims=claims)


@pytest.mark.parametrize(
    ("make_header", "code"),
    [
        pytest.param(lambda _: "Bearer " + "A" * 100_000, "invalid_token", id="bearer-100kB"),
        pytest.param(
            lambda shared_login: "Bearer " + _big_jwt(shared_login, 100_000),
            "invalid_token",
            id="signed-jwt-100kB",
        ),
        pytest.param(
            lambda shared_login: "Bearer " + "a" * 50_000 + "." + "b" * 50_000 + ".c",
            "invalid_token",
            id="jwt-shaped-100kB",
        ),
        pytest.param(lambda _: "Basic " + "A" * 100_000, "not_authenticated", id="basic-100kB"),
        pytest.param(lambda _: "Bearer " + " " * 100_000, "not_authenticated", id="spaces-100kB"),
    ],
)
async def test_a13_oversized_authorization_header_is_a_fast_4xx(
    shared_login: Login, make_header: Callable[[Login], str], code: str
) -> None:
    value = make_header(shared_login)
    assert len(value) >= 100_000
    started = time.perf_counter()
    response = await shared_login.harness.client.get(ME, headers={"Authorization": value})
    elapsed = time.perf_counter() - started
    assert_error(response, 401, code)
    assert elapsed < 0.5, elapsed


async def test_a13_validly_signed_token_over_the_size_limit_is_rejected(
    shared_login: Login,
) -> None:
    token = _big_jwt(shared_login, 10_000)
    started = time.perf_counter()
    response = await shared_login.get(token)
    assert time.perf_counter() - started < 0.5
    assert_error(response, 401, "invalid_token")


# --------------------------------------------------------------------------------------------
# Tokens in the query string are ignored (C26, and the "every route" scope of A)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/auth/me"),
        ("GET", "/auth/session-status"),
        ("POST", "/auth/logout"),
        ("POST", "/auth/logout-all"),
    ],
)
@pytest.mark.parametrize("param", ["access_token", "token", "bearer"])
async def test_token_in_query_string_is_ignored(
    login: Login, method: str, path: str, param: str
) -> None:
    response = await login.harness.client.request(method, path, params={param: login.access_token})
    assert_error(response, 401, "not_authenticated")
    # Nothing was revoked by the ignored token.
    assert (await login.get(login.access_token)).status_code == 200


# --------------------------------------------------------------------------------------------
# Every route that accepts a token applies the same verification
# --------------------------------------------------------------------------------------------


def _forgeries(login: Login) -> dict[str, tuple[str, str]]:
    now = login.now
    expired = login.payload(iat=now - 1000, nbf=now - 1000, exp=now - 1000 + TTL)
    return {
        "alg-none": (unsigned(login.header(alg="none"), login.payload()), "invalid_token"),
        "hs256-pem": (
            hmac_jws(
                login.header(alg="HS256"), login.payload(), _public_key_as_secret(login, "pem")
            ),
            "invalid_token",
        ),
        "foreign-key": (
            sign_jws(login.header(), login.payload(), _foreign_key("ES256"), "ES256"),
            "invalid_token",
        ),
        "zero-signature": (unsigned(login.header(), login.payload(), bytes(64)), "invalid_token"),
        "wrong-aud": (login.sign(claims=login.payload(aud="other")), "invalid_token"),
        "expired": (login.sign(claims=expired), "token_expired"),
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/auth/me"),
        ("GET", "/auth/session-status"),
        ("POST", "/auth/logout"),
        ("POST", "/auth/logout-all"),
    ],
)
async def test_every_protected_route_rejects_forged_tokens(
    login: Login, method: str, path: str
) -> None:
    for name, (token, code) in _forgeries(login).items():
        response = await login.harness.client.request(method, path, headers=bearer(token))
        assert response.status_code == 401, (name, response.text)
        assert error_code(response) == code, (name, response.text)
    # A forged logout/logout-all revoked nothing.
    assert (await login.get(login.access_token)).status_code == 200
    assert (await login.harness.refresh(login.refresh_token)).status_code == 200


async def test_a10_media_type_with_application_prefix_is_accepted(login: Login) -> None:
    # RFC 9068 §4: "at+jwt" and "application/at+jwt" name the same type.
    token = login.sign(header=login.header(typ="application/at+jwt"))
    assert (await login.get(token)).status_code == 200


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
async def test_a7_absurd_timestamps_signed_by_us_are_401_not_500(
    shared_login: Login, claim: str
) -> None:
    for value in (10**12, 10**20, -1):
        claims = shared_login.payload(**{claim: value})
        assert_error(await shared_login.get(shared_login.sign(claims=claims)), 401, "invalid_token")
