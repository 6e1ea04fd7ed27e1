"""The kit enforces DPoP (RFC 9449, issue 18) for tokens bound to a key (`cnf.jkt`): the notes
service (a real uvicorn process) accepts a bound token only as `Authorization: DPoP` with a fresh
proof of that key for this request, and refuses everything else with
`WWW-Authenticate: DPoP error="invalid_dpop_proof", algs="..."`. Proofs are made here with
PyJWT and cryptography (tests/downstream/dpop_keys.py), tokens by the stand-in issuer."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from authsvc_kit import AuthMiddleware, Kit, KitConfig
from authsvc_kit.dpop import MemoryReplayCache, normalize_htu, thumbprint
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.utils import der_to_raw_signature
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from websockets.asyncio.client import connect

from tests.conftest import TEST_REDIS_URL
from tests.downstream.conftest import notes_service
from tests.downstream.dpop_keys import ProofKey, ath, b64, dpop_headers, unsigned_proof
from tests.downstream.issuer import AUDIENCE, CLIENT_ID, FakeIssuer
from tests.downstream.wsclient import next_message, until_closed, ws_url
from tests.support.redisserver import PrivateRedis, private_redis

pytestmark = pytest.mark.slow

# The WebSocket client's own logger above DEBUG: at DEBUG it logs the handshake's headers.
_QUIET = logging.getLogger("tests.downstream.test_kit_dpop.ws")
_QUIET.setLevel(logging.INFO)
ALGS = 'algs="ES256 ES384 EdDSA RS256 PS256"'
REFUSED = f'DPoP error="invalid_dpop_proof", {ALGS}'


def _bound(issuer: FakeIssuer, key: ProofKey, **claims: Any) -> str:
    return issuer.access_token(cnf={"jkt": key.jkt}, **claims)


def _assert_refused(response: httpx.Response, code: str = "invalid_dpop_proof") -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == code
    expected = REFUSED if code == "invalid_dpop_proof" else f'DPoP error="{code}", {ALGS}'
    assert response.headers["www-authenticate"] == expected
    assert response.headers["cache-control"] == "no-store"


async def test_a_bound_token_with_its_proof_is_accepted(issuer: FakeIssuer, notes: str) -> None:
    key = ProofKey.new()
    token = _bound(issuer, key)
    url = f"{notes}/notes"
    async with httpx.AsyncClient(timeout=5) as client:
        listed = await client.get(url, headers=dpop_headers(token, key.proof("GET", url, token)))
        created = await client.post(
            url, json={"text": "bound"}, headers=dpop_headers(token, key.proof("POST", url, token))
        )
        # htu is compared without query or fragment, scheme and host case-insensitively.
        loud = url.replace("http://127.0.0.1", "HTTP://127.0.0.1") + "?ignored=1#frag"
        queried = await client.get(
            f"{url}?page=2", headers=dpop_headers(token, key.proof("GET", loud, token))
        )
    assert listed.status_code == 200, listed.text
    assert listed.json()["identity"]["user_id"] == json_claims(token)["sub"]
    assert created.status_code == 201, created.text
    assert queried.status_code == 200, queried.text
    assert [n["text"] for n in queried.json()["notes"]] == ["bound"]


@pytest.mark.parametrize("alg", ["ES384", "EdDSA", "RS256", "PS256"])
async def test_every_default_algorithm_is_accepted(
    issuer: FakeIssuer, notes: str, alg: str
) -> None:
    key = ProofKey.new(alg)
    token = _bound(issuer, key)
    url = f"{notes}/notes"
    async with httpx.AsyncClient(timeout=5) as client:
        ok = await client.get(url, headers=dpop_headers(token, key.proof("GET", url, token)))
    assert ok.status_code == 200, ok.text


def json_claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


Case = Callable[[ProofKey, str, str], dict[str, str] | list[tuple[str, str]]]


def _hs256(key: ProofKey, url: str, token: str) -> str:
    header = {"typ": "dpop+jwt", "alg": "HS256", "jwk": key.jwk}
    claims = {"jti": uuid.uuid4().hex, "htm": "GET", "htu": url, "iat": int(time.time())}
    claims["ath"] = ath(token)
    unsigned = unsigned_proof(header, claims)
    secret = json.dumps(key.jwk).encode()
    mac = hmac.new(secret, unsigned.rsplit(".", 1)[0].encode(), hashlib.sha256).digest()
    return unsigned_proof(header, claims, mac)


def _none(key: ProofKey, url: str, token: str) -> str:
    header = {"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk}
    claims = {"jti": uuid.uuid4().hex, "htm": "GET", "htu": url, "iat": int(time.time())}
    return unsigned_proof(header, {**claims, "ath": ath(token)})


def _signed_by_another(key: ProofKey, url: str, token: str) -> str:
    """Names the token's key in its jwk, but signed by another one."""
    return ProofKey.new().proof("GET", url, token, headers={"jwk": key.jwk})


def _p384_as_es256(key: ProofKey, url: str, token: str) -> str:
    """A P-384 key's proof labelled ES256 (and signed so): the jwk does not fit the alg."""
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk}
    claims = {"jti": uuid.uuid4().hex, "htm": "GET", "htu": url, "iat": int(time.time())}
    unsigned = unsigned_proof(header, {**claims, "ath": ath(token)})
    signing_input = unsigned.rsplit(".", 1)[0].encode()
    assert isinstance(key.private, ec.EllipticCurvePrivateKey)
    der = key.private.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    return unsigned + b64(der_to_raw_signature(der, key.private.curve))


def _weak_rsa() -> ProofKey:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - refused
    return ProofKey(weak, "RS256")


CASES: dict[str, Case] = {
    "bearer_with_proof": lambda k, u, t: {
        "Authorization": f"Bearer {t}",
        "DPoP": k.proof("GET", u, t),
    },
    "bearer_without_proof": lambda k, u, t: {"Authorization": f"Bearer {t}"},
    "no_proof": lambda k, u, t: dpop_headers(t, None),
    "empty_proof": lambda k, u, t: dpop_headers(t, ""),
    "not_a_jwt": lambda k, u, t: dpop_headers(t, "not.a.jwt"),
    "another_key": lambda k, u, t: dpop_headers(t, ProofKey.new().proof("GET", u, t)),
    "jwk_not_the_signer": lambda k, u, t: dpop_headers(t, _signed_by_another(k, u, t)),
    "another_method": lambda k, u, t: dpop_headers(t, k.proof("POST", u, t)),
    "lower_case_method": lambda k, u, t: dpop_headers(t, k.proof("get", u, t)),
    "another_path": lambda k, u, t: dpop_headers(t, k.proof("GET", u + "/other", t)),
    "another_host": lambda k, u, t: dpop_headers(
        t, k.proof("GET", u.replace("127.0.0.1", "localhost"), t)
    ),
    "another_scheme": lambda k, u, t: dpop_headers(
        t, k.proof("GET", u.replace("http://", "https://"), t)
    ),
    "stale_iat": lambda k, u, t: dpop_headers(t, k.proof("GET", u, t, iat=int(time.time()) - 90)),
    "future_iat": lambda k, u, t: dpop_headers(t, k.proof("GET", u, t, iat=int(time.time()) + 90)),
    "string_iat": lambda k, u, t: dpop_headers(t, k.proof("GET", u, t, iat=str(int(time.time())))),
    "no_jti": lambda k, u, t: dpop_headers(t, k.proof("GET", u, t, jti=None)),
    "alg_none": lambda k, u, t: dpop_headers(t, _none(k, u, t)),
    "alg_hs256": lambda k, u, t: dpop_headers(t, _hs256(k, u, t)),
    "private_key_in_jwk": lambda k, u, t: dpop_headers(
        t, k.proof("GET", u, t, headers={"jwk": k.private_jwk})
    ),
    "no_jwk": lambda k, u, t: dpop_headers(t, k.proof("GET", u, t, headers={"jwk": None})),
    "wrong_typ": lambda k, u, t: dpop_headers(t, k.proof("GET", u, t, headers={"typ": "JWT"})),
    "wrong_ath": lambda k, u, t: dpop_headers(t, k.proof("GET", u, t, ath=ath(t + "x"))),
    "no_ath": lambda k, u, t: dpop_headers(t, k.proof("GET", u, t, ath=None)),
    "critical_extension": lambda k, u, t: dpop_headers(
        t, k.proof("GET", u, t, headers={"crit": ["exp"]})
    ),
    "jwk_of_another_curve": lambda k, u, t: dpop_headers(t, _p384_as_es256(k, u, t)),
    "short_rsa_key": lambda k, u, t: dpop_headers(t, k.proof("GET", u, t)),
    "two_proofs": lambda k, u, t: [
        ("Authorization", f"DPoP {t}"),
        ("DPoP", k.proof("GET", u, t)),
        ("DPoP", k.proof("GET", u, t)),
    ],
}


# Cases whose token is bound to a key of their own (by default a fresh P-256 one).
KEYS: dict[str, Callable[[], ProofKey]] = {
    "jwk_of_another_curve": lambda: ProofKey.new("ES384"),
    "short_rsa_key": _weak_rsa,
}


@pytest.mark.parametrize("case", list(CASES))
# The short RSA key is the point of its case: PyJWT warns when the test signs with it.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_a_bound_token_is_refused_without_a_valid_proof(
    issuer: FakeIssuer, notes: str, case: str
) -> None:
    key = KEYS.get(case, ProofKey.new)()  # the token is bound to this key
    token = _bound(issuer, key)
    url = f"{notes}/notes"
    async with httpx.AsyncClient(timeout=5) as client:
        refused = await client.get(url, headers=CASES[case](key, url, token))
    _assert_refused(refused)


async def test_a_replayed_proof_is_refused(issuer: FakeIssuer, notes: str) -> None:
    key = ProofKey.new()
    token = _bound(issuer, key)
    url = f"{notes}/notes"
    headers = dpop_headers(token, key.proof("GET", url, token))
    async with httpx.AsyncClient(timeout=5) as client:
        first = await client.get(url, headers=headers)
        again = await client.get(url, headers=headers)
        fresh = await client.get(url, headers=dpop_headers(token, key.proof("GET", url, token)))
    assert first.status_code == 200, first.text
    _assert_refused(again)
    assert fresh.status_code == 200, fresh.text


async def test_unbound_tokens(issuer: FakeIssuer, notes: str) -> None:
    """Unbound tokens work as Bearer exactly as before (a stray proof is ignored), and are
    refused under the DPoP scheme, which promises a binding the token does not have."""
    key = ProofKey.new()
    token = issuer.access_token()
    url = f"{notes}/notes"
    async with httpx.AsyncClient(timeout=5) as client:
        bearer = await client.get(url, headers={"Authorization": f"Bearer {token}"})
        stray = await client.get(
            url, headers={"Authorization": f"Bearer {token}", "DPoP": key.proof("GET", url, token)}
        )
        as_dpop = await client.get(url, headers=dpop_headers(token, key.proof("GET", url, token)))
        bad_as_dpop = await client.get(url, headers=dpop_headers("not.a.token", None))
        bad_as_bearer = await client.get(url, headers={"Authorization": "Bearer not.a.token"})
        nothing = await client.get(url)
    assert bearer.status_code == 200, bearer.text
    assert stray.status_code == 200, stray.text
    _assert_refused(as_dpop, "invalid_token")
    _assert_refused(bad_as_dpop, "invalid_token")
    assert bad_as_bearer.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert nothing.headers["www-authenticate"] == "Bearer"


async def test_a_confirmation_the_kit_cannot_check_is_refused(
    issuer: FakeIssuer, notes: str
) -> None:
    token = issuer.access_token(cnf={"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"})
    async with httpx.AsyncClient(timeout=5) as client:
        refused = await client.get(f"{notes}/notes", headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_token"


async def test_a_proof_replayed_at_another_replica_is_refused_through_redis(
    issuer: FakeIssuer,
) -> None:
    # Both replicas behind one public name, as a gateway would put them: the proof names it.
    public = "https://notes.example"
    env = {
        "AUTHSVC_REDIS_URL": TEST_REDIS_URL,
        "AUTHSVC_REDIS_NAMESPACE": uuid.uuid4().hex,
        "AUTHSVC_PUBLIC_URL": public,
        # A Redis call slower than the timeout lets the local copy decide (fail-open, tested
        # below): under a loaded CI the first calls took longer than the default 0.25 s.
        "AUTHSVC_REDIS_TIMEOUT": "3",
    }
    key = ProofKey.new()
    token = _bound(issuer, key)
    with notes_service(issuer.url, env=env) as a, notes_service(issuer.url, env=env) as b:
        headers = dpop_headers(token, key.proof("GET", f"{public}/notes", token))
        async with httpx.AsyncClient(timeout=5) as client:
            first = await client.get(f"{a}/notes", headers=headers)
            replayed = await client.get(f"{b}/notes", headers=headers)
            fresh = dpop_headers(token, key.proof("GET", f"{public}/notes", token))
            other = await client.get(f"{b}/notes", headers=fresh)
    assert first.status_code == 200, first.text
    _assert_refused(replayed)
    assert other.status_code == 200, other.text


@pytest.fixture
def redis() -> Iterator[PrivateRedis]:
    with private_redis() as running:
        yield running


def _kit_app(kit: Kit) -> httpx.AsyncClient:
    async def whoami(request: Request) -> JSONResponse:
        principal = request.scope.get("authsvc.principal")
        return JSONResponse({"sub": principal.user_id if principal else None})

    app = AuthMiddleware(Starlette(routes=[Route("/", whoami)]), kit, required=True)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc")


def _dpop_keys(redis: PrivateRedis) -> set[str]:
    return {name for name in redis.keys() if name.split(":")[-2] == "dpop"}


async def test_redis_failing_falls_back_to_the_local_cache(
    issuer: FakeIssuer, redis: PrivateRedis, caplog: pytest.LogCaptureFixture
) -> None:
    config = KitConfig(
        issuer=issuer.url, audience=AUDIENCE, client_id=CLIENT_ID, redis_url=redis.url
    )
    kit = Kit(config)
    key = ProofKey.new()
    token = _bound(issuer, key)
    url = "http://svc/"

    def fresh() -> dict[str, str]:
        return dpop_headers(token, key.proof("GET", url, token))

    async with kit.lifespan(), _kit_app(kit) as client:
        assert (await client.get("/", headers=fresh())).status_code == 200
        redis.freeze()
        try:
            proof = key.proof("GET", url, token)
            started = time.monotonic()
            ok = await client.get("/", headers=dpop_headers(token, proof))
            elapsed = time.monotonic() - started
            replayed = await client.get("/", headers=dpop_headers(token, proof))
            started = time.monotonic()
            next_ok = await client.get("/", headers=fresh())
            next_elapsed = time.monotonic() - started
        finally:
            redis.thaw()
        # Redis back: after the 2 s it is left alone, proofs are shared through it again (the
        # first call may still time out reconnecting on a loaded machine, and fall back again).
        await asyncio.sleep(2.1)
        before = _dpop_keys(redis)
        deadline = time.monotonic() + 15
        while not _dpop_keys(redis) - before:
            assert time.monotonic() < deadline, "no proof reached Redis after it came back"
            assert (await client.get("/", headers=fresh())).status_code == 200
            await asyncio.sleep(0.1)
    assert ok.status_code == 200, ok.text
    _assert_refused(replayed)
    assert next_ok.status_code == 200, next_ok.text
    # One Redis timeout (0.25 s) for the revocation check and one for the replay cache, then
    # the replay cache leaves Redis alone for a while: the next request pays only the first.
    assert elapsed < 1.5
    assert next_elapsed < elapsed - 0.15
    assert "authsvc_kit.dpop_replay_cache_local" in caplog.text


async def test_the_public_url_is_what_the_proof_names(issuer: FakeIssuer) -> None:
    """Behind a gateway that strips a prefix: htu is AUTHSVC_PUBLIC_URL + the path."""
    env = {"AUTHSVC_PUBLIC_URL": "https://API.example.com/notes-api/"}
    key = ProofKey.new()
    token = _bound(issuer, key)
    external = "https://api.example.com/notes-api/notes"
    with notes_service(issuer.url, env=env) as notes:
        async with httpx.AsyncClient(timeout=5) as client:
            ok = await client.get(
                f"{notes}/notes", headers=dpop_headers(token, key.proof("GET", external, token))
            )
            internal = await client.get(
                f"{notes}/notes",
                headers=dpop_headers(token, key.proof("GET", f"{notes}/notes", token)),
            )
    assert ok.status_code == 200, ok.text
    _assert_refused(internal)


async def test_forwarded_headers_are_believed_only_from_trusted_proxies(
    issuer: FakeIssuer, notes: str
) -> None:
    key = ProofKey.new()
    token = _bound(issuer, key)
    # A proxy publishing the service at https://notes.example/api/, stripping /api.
    external = "https://notes.example/api/notes"

    def headers() -> dict[str, str]:
        return {
            **dpop_headers(token, key.proof("GET", external, token)),
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil.example, notes.example",
            "X-Forwarded-Prefix": "/api",
        }

    env = {"AUTHSVC_TRUSTED_PROXIES": "127.0.0.0/8"}
    with notes_service(issuer.url, env=env) as behind_proxy:
        async with httpx.AsyncClient(timeout=5) as client:
            trusted = await client.get(f"{behind_proxy}/notes", headers=headers())
            untrusted = await client.get(f"{notes}/notes", headers=headers())
    assert trusted.status_code == 200, trusted.text
    _assert_refused(untrusted)


async def test_websockets_take_the_proof_in_the_handshake_or_the_message(
    issuer: FakeIssuer, notes: str
) -> None:
    key = ProofKey.new()
    token = _bound(issuer, key, ttl=30)
    url = ws_url(notes)
    by_header = await connect(
        url,
        additional_headers=dpop_headers(token, key.proof("GET", url, token)),
        open_timeout=5,
        logger=_QUIET,
    )
    assert (await next_message(by_header))["type"] == "hello"
    await by_header.close()

    # A browser: the proof comes with the token in the first message, and with each renewal.
    socket = await connect(url, open_timeout=5, logger=_QUIET)
    http_form = url.replace("ws://", "http://")  # the same resource: accepted too
    proof = key.proof("GET", http_form, token)
    await socket.send(json.dumps({"type": "authenticate", "token": token, "proof": proof}))
    assert (await next_message(socket))["type"] == "hello"
    same = {name: json_claims(token)[name] for name in ("sub", "sid")}
    renewed = _bound(issuer, key, ttl=60, **same)
    proof = key.proof("GET", url, renewed)
    await socket.send(json.dumps({"type": "authenticate", "token": renewed, "proof": proof}))
    assert (await next_message(socket))["type"] == "token_renewed"
    # A renewal without its proof ends the socket.
    later = _bound(issuer, key, ttl=90, **same)
    await socket.send(json.dumps({"type": "authenticate", "token": later}))
    closed = await until_closed(socket, within=5)
    assert (closed.code, closed.reason) == (4400, "invalid_dpop_proof")

    for first in (
        {"type": "authenticate", "token": token},
        {"type": "authenticate", "token": token, "proof": proof},  # replayed, for another token
    ):
        socket = await connect(url, open_timeout=5, logger=_QUIET)
        await socket.send(json.dumps(first))
        closed = await until_closed(socket, within=5)
        assert (closed.code, closed.reason) == (4400, "invalid_dpop_proof")


def test_the_configuration_refuses_symmetric_or_no_algorithms() -> None:
    base = {"AUTHSVC_ISSUER": "https://auth.example", "AUTHSVC_AUDIENCE": "notes-api"}
    config = KitConfig.from_env(
        {
            **base,
            "AUTHSVC_DPOP_ALGORITHMS": "ES256, EdDSA",
            "AUTHSVC_DPOP_IAT_WINDOW": "30",
            "AUTHSVC_PUBLIC_URL": "https://api.example.com",
            "AUTHSVC_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
        }
    )
    assert config.dpop_algorithms == ("ES256", "EdDSA")
    assert config.dpop_iat_window == 30
    assert config.public_url == "https://api.example.com"
    assert config.trusted_proxies == ("10.0.0.0/8", "::1")
    for bad in ("HS256", "none", "ES256,HS512"):
        with pytest.raises(ValueError, match="asymmetric"):
            KitConfig.from_env({**base, "AUTHSVC_DPOP_ALGORITHMS": bad})
    with pytest.raises(ValueError, match="public_url"):
        KitConfig.from_env({**base, "AUTHSVC_PUBLIC_URL": "https://api.example.com/?x=1"})
    with pytest.raises(ValueError, match="proxy|network|address"):
        KitConfig.from_env({**base, "AUTHSVC_TRUSTED_PROXIES": "not-a-network"})


def test_thumbprint_and_htu_as_the_rfcs_say() -> None:
    # RFC 7638 §3.1's example key and thumbprint.
    rsa = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSo"
        "c_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0"
        "_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI"
        "4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(rsa) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    same = "https://server.example.com/token"
    for variant in (
        "HTTPS://Server.Example.COM:443/token",
        "https://server.example.com/token?x=1",
        "https://server.example.com/token#f",
        "wss://server.example.com/token",
    ):
        assert normalize_htu(variant) == normalize_htu(same)
    for other in (
        "http://server.example.com/token",
        "https://server.example.com:8443/token",
        "https://server.example.com/Token",
        "https://server.example.com:bad/token",
    ):
        assert normalize_htu(other) != normalize_htu(same)


def test_the_memory_replay_cache_forgets_expired_jtis_as_it_goes() -> None:
    """A jti is refused within its ttl and accepted after; expired entries leave a few at a
    time with each claim (no scan of the whole cache), so its size follows the live ones."""
    now = [1000.0]
    cache = MemoryReplayCache(lambda: now[0])
    assert all(cache.claim_now(f"old-{i}", 120) for i in range(1500))
    assert not cache.claim_now("old-5", 120)
    now[0] += 121
    assert all(cache.claim_now(f"new-{i}", 120) for i in range(500))
    assert len(cache) == 500  # the 1,500 expired ones are gone, 4 per claim
    assert cache.claim_now("old-5", 120)
    assert not cache.claim_now("new-7", 120)
