"""DPoP proofs (RFC 9449 §4.3): the checks that need no storage, and the key thumbprint.

A proof is a JWT the client signs with its own key for one request: header `typ: dpop+jwt`,
an asymmetric `alg` and the public `jwk`; claims `jti`, `htm`, `htu`, `iat`, and `ath` (the
hash of the access token) when one is presented, `nonce` when the server asks for one. What
needs state - the `jti` replay cache and the nonce's validity - is app.dpop.replay and
app.dpop.nonce; `verify_proof` returns what they need.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from jwt.algorithms import Algorithm, get_default_algorithms
from jwt.exceptions import PyJWTError
from jwt.utils import base64url_decode

from app.dpop.errors import InvalidDPoPProof

# RFC 7638 §3.2: the members of each key type that make its thumbprint, in lexicographic order.
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}
# Members that only a private key has (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2): a proof whose
# jwk carries one is refused (RFC 9449 §4.3 check 6), whatever else it holds.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# RFC 9449 §4.3 check 5: never none or a MAC (whose "key" the proof would carry), and each
# algorithm with its own key type (and curves). What a deployment accepts is narrower still:
# DPOP_ALGORITHMS.
_KEY_FOR_ALG: dict[str, tuple[str, frozenset[str]]] = {
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    **{alg: ("RSA", frozenset()) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
}
_ASYMMETRIC = frozenset(_KEY_FOR_ALG)
_MIN_RSA_BITS, _MAX_RSA_BITS = 2048, 4096
# A proof is a few hundred bytes; a bound keeps parsing a hostile header cheap.
MAX_PROOF_LENGTH = 4096


@dataclass(frozen=True)
class Proof:
    """A proof whose signature and claims hold: what the stateful checks need."""

    jkt: str  # the key's RFC 7638 SHA-256 thumbprint, base64url
    jti: str
    iat: int
    nonce: str | None


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK SHA-256 thumbprint: the required members, sorted, no whitespace."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None or any(not isinstance(jwk.get(m), str) for m in members):
        raise InvalidDPoPProof("The proof's jwk is not a supported public key.")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def access_token_hash(access_token: str) -> str:
    """The `ath` claim: base64url SHA-256 of the access token's ASCII (RFC 9449 §4.2)."""
    return _b64(hashlib.sha256(access_token.encode("ascii")).digest())


def normalize_htu(url: str) -> str:
    """Scheme, host, port and path of a URL, as RFC 9449 §4.3 compares `htu`: no query, no
    fragment, scheme and host in lower case, the scheme's default port dropped (RFC 3986 §6.2).
    InvalidDPoPProof for what is no http(s) URL of a host: a userinfo part or a port that is
    not a number is refused, not ignored (`https://evil@a:x/p` is not `https://a/p`)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidDPoPProof("The DPoP proof's htu is not a URL.") from exc
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host or "@" in parts.netloc:
        raise InvalidDPoPProof("The DPoP proof's htu is not an http(s) URL of a host.")
    if ":" in host:
        host = f"[{host}]"
    default = {"http": 80, "https": 443}.get(scheme)
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path or '/'}"


def verify_proof(
    proof: str,
    *,
    method: str,
    url: str,
    now: float,
    window: float,
    algorithms: frozenset[str],
    access_token: str | None = None,
) -> Proof:
    """Every check of RFC 9449 §4.3 that needs no state, for a request `method url` received
    at `now`; `window`: how far `iat` may lie from now, either way, in seconds."""
    if len(proof) > MAX_PROOF_LENGTH:
        raise InvalidDPoPProof("The DPoP proof is too long.")
    header_segment, payload_segment, signature_segment = _segments(proof)
    signer = _signer_of(header_segment)
    if signer.alg not in algorithms:
        raise InvalidDPoPProof("The DPoP proof's alg is not an allowed asymmetric algorithm.")
    claims = _signed_claims(signer, header_segment, payload_segment, signature_segment)
    _check_claims(claims, method=method, url=url, now=now, window=window)
    if access_token is not None and claims.get("ath") != access_token_hash(access_token):
        raise InvalidDPoPProof("The DPoP proof's ath does not match the access token.")
    nonce = claims.get("nonce")
    return Proof(
        jkt=signer.jkt,
        jti=claims["jti"],
        iat=int(claims["iat"]),
        nonce=nonce if isinstance(nonce, str) else None,
    )


@dataclass(frozen=True, slots=True)
class _Signer:
    """What a proof's protected header says about its signer, checked once per distinct
    header: a client sends the same header (typ, alg, jwk) with every proof."""

    alg: str
    jkt: str
    algorithm: Algorithm
    key: Any  # the public key, as `algorithm` verifies with it


# Parsing a header, thumbprinting its jwk and loading the key cost more than the signature
# check itself; a bounded cache of recent headers (oldest out first) makes them once a client.
_SIGNERS: dict[str, _Signer] = {}
_SIGNER_CACHE_SIZE = 4096
_ALGORITHMS = get_default_algorithms()


def _segments(proof: str) -> tuple[str, str, str]:
    parts = proof.split(".")
    if len(parts) != 3 or not all(parts):
        raise InvalidDPoPProof("The DPoP proof is not a JWT.")
    return parts[0], parts[1], parts[2]


def _signer_of(header_segment: str) -> _Signer:
    signer = _SIGNERS.get(header_segment)
    if signer is None:
        signer = _read_signer(_json_object(header_segment, "header"))
        if len(_SIGNERS) >= _SIGNER_CACHE_SIZE:
            _SIGNERS.pop(next(iter(_SIGNERS)))
        _SIGNERS[header_segment] = signer
    return signer


def _read_signer(header: dict[str, Any]) -> _Signer:
    alg = header.get("alg")
    if header.get("typ") != "dpop+jwt":
        raise InvalidDPoPProof("The DPoP proof's typ must be dpop+jwt.")
    if not isinstance(alg, str) or alg not in _ASYMMETRIC:
        raise InvalidDPoPProof("The DPoP proof's alg is not an allowed asymmetric algorithm.")
    if "crit" in header:  # RFC 7515 §4.1.11: no extension is understood here
        raise InvalidDPoPProof("The DPoP proof's header names extensions (crit).")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise InvalidDPoPProof("The DPoP proof carries no jwk.")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise InvalidDPoPProof("The DPoP proof's jwk must be a public key.")
    jkt = thumbprint(jwk)
    # The key must be of the algorithm's type and curve (an ES256 proof with a P-384 key, or
    # RS256 with an EC key, is refused here rather than left to the library), and an RSA key
    # of a size a signature means something with.
    kty, curves = _KEY_FOR_ALG[alg]
    if jwk.get("kty") != kty or (curves and jwk.get("crv") not in curves):
        raise InvalidDPoPProof("The DPoP proof's jwk is not a key for its alg.")
    try:
        key = jwt.PyJWK(jwk, algorithm=alg)
    except PyJWTError as exc:
        raise InvalidDPoPProof("The DPoP proof's jwk is not a key for its alg.") from exc
    if kty == "RSA":
        _check_rsa_key(key.key.public_numbers())
    return _Signer(alg=alg, jkt=jkt, algorithm=_ALGORITHMS[alg], key=key.key)


def _check_rsa_key(numbers: Any) -> None:
    """A key every client makes (e = 65537, 2048 to 4096 bits): a public exponent as long as
    the modulus makes each check a full-size exponentiation (9 ms at 3072 bits, on the event
    loop), and nothing legitimate needs one."""
    bits = numbers.n.bit_length()
    if bits < _MIN_RSA_BITS:
        raise InvalidDPoPProof("The DPoP proof's RSA key is shorter than 2048 bits.")
    if bits > _MAX_RSA_BITS or numbers.e != 65537:
        raise InvalidDPoPProof("The DPoP proof's RSA key must have e = 65537 and <= 4096 bits.")


def _signed_claims(
    signer: _Signer, header_segment: str, payload_segment: str, signature_segment: str
) -> dict[str, Any]:
    try:
        signature = base64url_decode(signature_segment)
        valid = signer.algorithm.verify(
            f"{header_segment}.{payload_segment}".encode(), signer.key, signature
        )
    except (ValueError, TypeError, PyJWTError):
        valid = False
    if not valid:
        raise InvalidDPoPProof("The DPoP proof's signature does not verify.")
    return _json_object(payload_segment, "claims")


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(base64url_decode(segment))
    except (ValueError, TypeError, RecursionError) as exc:  # RecursionError: deep nesting
        raise InvalidDPoPProof("The DPoP proof is not a JWT.") from exc
    if not isinstance(value, dict):
        raise InvalidDPoPProof(f"The DPoP proof's {what} is not a JSON object.")
    return value


def _check_claims(
    claims: dict[str, Any], *, method: str, url: str, now: float, window: float
) -> None:
    jti, iat = claims.get("jti"), claims.get("iat")
    if not isinstance(jti, str) or not 0 < len(jti) <= 256:
        raise InvalidDPoPProof("The DPoP proof needs a jti.")
    if claims.get("htm") != method:
        raise InvalidDPoPProof("The DPoP proof's htm is not this request's method.")
    htu = claims.get("htu")
    if not isinstance(htu, str) or normalize_htu(htu) != normalize_htu(url):
        raise InvalidDPoPProof("The DPoP proof's htu is not this request's URL.")
    if isinstance(iat, bool) or not isinstance(iat, int | float) or not math.isfinite(iat):
        raise InvalidDPoPProof("The DPoP proof needs a numeric iat.")
    if abs(now - iat) > window:
        raise InvalidDPoPProof("The DPoP proof's iat is outside the accepted window.")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
