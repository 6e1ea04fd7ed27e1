"""DPoP proof checks (app/dpop/proof.py), against proofs made by an independent JOSE library
(joserfc): each RFC 9449 §4.3 check refuses what it must and nothing else."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from jwt.algorithms import ECAlgorithm

from app.dpop.errors import InvalidDPoPProof, UseDPoPNonce
from app.dpop.nonce import NonceIssuer
from app.dpop.proof import access_token_hash, normalize_htu, thumbprint, verify_proof

ALGS = frozenset({"ES256", "EdDSA", "RS256"})
URL = "https://auth.example/auth/refresh"
NOW = 1_800_000_000.0


def ec_key() -> ECKey:
    return ECKey.generate_key("P-256")


def make_proof(
    key: Any,
    *,
    alg: str = "ES256",
    htm: str = "POST",
    htu: str = URL,
    iat: float = NOW,
    header: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    head = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}
    head.update(header or {})
    body = {"jti": str(uuid.uuid4()), "htm": htm, "htu": htu, "iat": int(iat), **claims}
    return jose_jwt.encode(head, body, key, algorithms=[alg])


def check(proof: str, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "method": "POST",
        "url": URL,
        "now": NOW,
        "window": 60,
        "algorithms": ALGS,
    }
    args.update(kw)
    return verify_proof(proof, **args)


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (ECKey.generate_key("P-256"), "ES256"),
        (OKPKey.generate_key("Ed25519"), "EdDSA"),
        (RSAKey.generate_key(2048), "RS256"),
    ],
)
def test_a_valid_proof_gives_the_keys_rfc7638_thumbprint(key: Any, alg: str) -> None:
    proof = check(make_proof(key, alg=alg))
    assert proof.jkt == key.thumbprint()  # joserfc's own RFC 7638 thumbprint
    assert proof.iat == int(NOW)
    assert proof.nonce is None


def test_thumbprint_matches_rfc7638s_example() -> None:
    # RFC 7638 §3.1
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
        "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YG"
        "jQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-b"
        "FTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_ath_binds_the_proof_to_the_access_token() -> None:
    key = ec_key()
    token = "eyJhbGciOiJFUzI1NiJ9.e30.sig"
    proof = make_proof(key, ath=access_token_hash(token))
    assert check(proof, access_token=token).jkt == key.thumbprint()
    with pytest.raises(InvalidDPoPProof, match="ath"):
        check(proof, access_token=token + "x")
    with pytest.raises(InvalidDPoPProof, match="ath"):
        check(make_proof(key), access_token=token)  # no ath at all


def test_htu_ignores_query_fragment_case_and_default_port() -> None:
    key = ec_key()
    assert check(make_proof(key, htu="HTTPS://Auth.Example:443/auth/refresh?x=1#f"))
    assert normalize_htu("http://h:80/p") == "http://h/p"
    assert normalize_htu("http://h:8080/p?q") == "http://h:8080/p"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"htm": "GET"}, "htm"),
        ({"htu": "https://auth.example/auth/logout"}, "htu"),
        ({"htu": "https://evil.example/auth/refresh"}, "htu"),
        ({"htu": "http://auth.example/auth/refresh"}, "htu"),
        ({"iat": NOW - 61}, "iat"),
        ({"iat": NOW + 61}, "iat"),
    ],
)
def test_a_proof_for_another_request_or_time_is_refused(
    claims: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidDPoPProof, match=reason):
        check(make_proof(ec_key(), **claims))


def test_headers_that_make_a_proof_invalid() -> None:
    key = ec_key()
    with pytest.raises(InvalidDPoPProof, match="typ"):
        check(make_proof(key, header={"typ": "JWT"}))
    with pytest.raises(InvalidDPoPProof, match="public key"):
        check(make_proof(key, header={"jwk": key.as_dict(private=True)}))
    no_jwk = pyjwt.encode(
        {"jti": "j", "htm": "POST", "htu": URL, "iat": int(NOW)},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"typ": "dpop+jwt"},
    )
    with pytest.raises(InvalidDPoPProof, match="jwk"):
        check(no_jwk)
    with pytest.raises(InvalidDPoPProof, match="alg"):
        check(make_proof(key), algorithms=frozenset({"EdDSA"}))  # not allowed here


def test_a_proof_signed_by_another_key_than_its_jwk_is_refused() -> None:
    signer, claimed = ec_key(), ec_key()
    proof = make_proof(signer, header={"jwk": claimed.as_dict(private=False)})
    with pytest.raises(InvalidDPoPProof, match="signature"):
        check(proof)


def test_a_known_header_does_not_vouch_for_the_rest_of_a_proof() -> None:
    """Headers are parsed once per client (a cache): a later proof with the same header must
    still have its own signature and claims checked."""
    key, other = ec_key(), ec_key()
    good = make_proof(key)
    assert check(good).jkt == thumbprint(key.as_dict(private=False))
    header = good.split(".")[0]
    forged = make_proof(other, header={"jwk": key.as_dict(private=False)})
    assert forged.split(".")[0] == header
    with pytest.raises(InvalidDPoPProof, match="signature"):
        check(forged)
    head, _, signature = good.split(".")
    tampered = make_proof(key, htm="GET").split(".")[1]
    with pytest.raises(InvalidDPoPProof, match="signature"):
        check(f"{head}.{tampered}.{signature}")
    with pytest.raises(InvalidDPoPProof, match="alg"):
        check(good, algorithms=frozenset({"RS256"}))  # cached, yet the allowed list applies


def test_a_header_naming_extensions_is_refused() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    header = {"typ": "dpop+jwt", "jwk": jwk, "crit": ["exp"], "exp": 1}
    claims = {"jti": "j", "htm": "POST", "htu": URL, "iat": int(NOW)}
    with pytest.raises(InvalidDPoPProof, match="crit"):
        check(pyjwt.encode(claims, key, algorithm="ES256", headers=header))


def test_symmetric_and_none_algorithms_are_refused() -> None:
    secret = OctKey.generate_key(256)
    hs = jose_jwt.encode(
        {"typ": "dpop+jwt", "alg": "HS256", "jwk": secret.as_dict(private=False)},
        {"jti": "a", "htm": "POST", "htu": URL, "iat": int(NOW)},
        secret,
        algorithms=["HS256"],
    )
    with pytest.raises(InvalidDPoPProof):
        check(hs)
    with pytest.raises(InvalidDPoPProof):  # even if a deployment lists HS256, the jwk has k
        check(hs, algorithms=frozenset({"HS256"}))
    header = jose_jwt.encode(
        {"typ": "dpop+jwt", "alg": "ES256", "jwk": ec_key().as_dict(private=False)},
        {"jti": "a", "htm": "POST", "htu": URL, "iat": int(NOW)},
        ec_key(),
    ).split(".")[0]
    none_alg = f"{header}.eyJqdGkiOiJhIn0."
    with pytest.raises(InvalidDPoPProof):
        check(none_alg)


@pytest.mark.parametrize("garbage", ["", "a.b.c", "x" * 5000, "e30.e30.", "..."])
def test_garbage_is_an_invalid_proof_not_a_crash(garbage: str) -> None:
    with pytest.raises(InvalidDPoPProof):
        check(garbage)


def test_claims_a_proof_must_carry() -> None:
    key = ec_key()
    for missing in ("jti", "htm", "htu", "iat"):
        head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": key.as_dict(private=False)}
        body = {"jti": "j", "htm": "POST", "htu": URL, "iat": int(NOW)}
        del body[missing]
        with pytest.raises(InvalidDPoPProof):
            check(jose_jwt.encode(head, body, key))


def test_nonces_are_valid_on_every_replica_for_one_to_two_steps() -> None:
    replica_a, replica_b = NonceIssuer(b"shared-secret"), NonceIssuer(b"shared-secret")
    now = time.time()
    nonce = replica_a.current(now)
    replica_b.check(nonce, now)  # issued by A, accepted by B
    replica_b.check(nonce, now + replica_b.step_seconds)  # still in the next step
    with pytest.raises(UseDPoPNonce) as stale:
        replica_b.check(nonce, now + 2 * replica_b.step_seconds)
    assert stale.value.nonce == replica_b.current(now + 2 * replica_b.step_seconds)
    with pytest.raises(UseDPoPNonce) as missing:
        replica_b.check(None, now)
    assert missing.value.headers() == {"DPoP-Nonce": nonce}
    with pytest.raises(UseDPoPNonce):
        NonceIssuer(b"another-secret").check(nonce, now)  # forged elsewhere


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (ECKey.generate_key("P-384"), "ES256"),  # the wrong curve for the algorithm
        (ECKey.generate_key("P-256"), "ES384"),
        (RSAKey.generate_key(2048), "EdDSA"),  # the wrong key type
    ],
    ids=["P-384 as ES256", "P-256 as ES384", "RSA as EdDSA"],
)
def test_a_key_that_is_not_of_its_algorithm_is_refused(key: Any, alg: str) -> None:
    head = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}
    body = {"jti": "j", "htm": "POST", "htu": URL, "iat": int(NOW)}
    token = f"{_b64(head)}.{_b64(body)}.{'A' * 86}"  # no library signs such a pair
    with pytest.raises(InvalidDPoPProof, match="not a key for its alg"):
        check(token, algorithms=frozenset({"ES256", "ES384", "EdDSA"}))


def test_a_short_rsa_key_is_refused() -> None:
    key = RSAKey.generate_key(1024, private=True)
    with pytest.raises(InvalidDPoPProof, match="2048"):
        check(make_proof(key, alg="RS256"))


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
