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
from jwt.exceptions import PyJWTError

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
    fragment, scheme and host in lower case, the scheme's default port dropped (RFC 3986 §6.2)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
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
    header = _header(proof)
    alg = header.get("alg")
    if header.get("typ") != "dpop+jwt":
        raise InvalidDPoPProof("The DPoP proof's typ must be dpop+jwt.")
    if not isinstance(alg, str) or alg not in algorithms:
        raise InvalidDPoPProof("The DPoP proof's alg is not an allowed asymmetric algorithm.")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise InvalidDPoPProof("The DPoP proof carries no jwk.")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise InvalidDPoPProof("The DPoP proof's jwk must be a public key.")
    jkt = thumbprint(jwk)
    claims = _signed_claims(proof, jwk, alg)
    _check_claims(claims, method=method, url=url, now=now, window=window)
    if access_token is not None and claims.get("ath") != access_token_hash(access_token):
        raise InvalidDPoPProof("The DPoP proof's ath does not match the access token.")
    nonce = claims.get("nonce")
    return Proof(
        jkt=jkt,
        jti=claims["jti"],
        iat=int(claims["iat"]),
        nonce=nonce if isinstance(nonce, str) else None,
    )


def _header(proof: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(proof)
    except PyJWTError as exc:
        raise InvalidDPoPProof("The DPoP proof is not a JWT.") from exc
    return header


def _signed_claims(proof: str, jwk: dict[str, Any], alg: str) -> dict[str, Any]:
    try:
        key = jwt.PyJWK(jwk, algorithm=alg)
        claims: dict[str, Any] = jwt.decode(
            proof,
            key=key,
            algorithms=[alg],
            # iat is checked against the window below, both ways; a proof has no exp or aud.
            options={"verify_aud": False, "verify_exp": False, "verify_iat": False},
        )
    except PyJWTError as exc:
        raise InvalidDPoPProof("The DPoP proof's signature does not verify.") from exc
    return claims


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
