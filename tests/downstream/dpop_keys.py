"""A DPoP client for the tests, built on PyJWT and cryptography only (not on the kit): a key
pair, its RFC 7638 thumbprint, and proofs (RFC 9449 §4.2), good or deliberately bad."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def ath(token: str) -> str:
    return b64(hashlib.sha256(token.encode("ascii")).digest())


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 §3: the required members in lexicographic order, no whitespace, SHA-256."""
    members = _MEMBERS[jwk["kty"]]
    canonical = "{" + ",".join(f'"{m}":{json.dumps(jwk[m])}' for m in members) + "}"
    return b64(hashlib.sha256(canonical.encode()).digest())


@dataclass
class ProofKey:
    private: PrivateKey
    alg: str = "ES256"

    @classmethod
    def new(cls, alg: str = "ES256") -> ProofKey:
        if alg == "ES256":
            return cls(ec.generate_private_key(ec.SECP256R1()), alg)
        if alg == "ES384":
            return cls(ec.generate_private_key(ec.SECP384R1()), alg)
        if alg == "EdDSA":
            return cls(ed25519.Ed25519PrivateKey.generate(), alg)
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048), alg)

    @property
    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            return ECAlgorithm.to_jwk(public, as_dict=True)
        if isinstance(public, ed25519.Ed25519PublicKey):
            return OKPAlgorithm.to_jwk(public, as_dict=True)
        assert isinstance(public, rsa.RSAPublicKey)
        return RSAAlgorithm.to_jwk(public, as_dict=True)

    @property
    def private_jwk(self) -> dict[str, Any]:
        private = self.private
        if isinstance(private, ec.EllipticCurvePrivateKey):
            return ECAlgorithm.to_jwk(private, as_dict=True)
        if isinstance(private, ed25519.Ed25519PrivateKey):
            return OKPAlgorithm.to_jwk(private, as_dict=True)
        return RSAAlgorithm.to_jwk(private, as_dict=True)

    @property
    def jkt(self) -> str:
        return jwk_thumbprint(self.jwk)

    def proof(
        self,
        method: str,
        url: str,
        token: str | None = None,
        *,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A proof for `method url` (and `token`'s ath); `claims`/`headers` override or, with
        None, drop a member."""
        body: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "htm": method,
            "htu": url,
            "iat": int(time.time()),
            **({"ath": ath(token)} if token is not None else {}),
            **claims,
        }
        header: dict[str, Any] = {"typ": "dpop+jwt", "jwk": self.jwk, **(headers or {})}
        return jwt.encode(
            {k: v for k, v in body.items() if v is not None},
            self.private,
            algorithm=self.alg,
            headers={k: v for k, v in header.items() if v is not None},
        )


def unsigned_proof(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A proof assembled by hand (alg none, or a MAC): what PyJWT would refuse to sign."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(signature)}"


def dpop_headers(token: str, proof: str | None) -> dict[str, str]:
    headers = {"Authorization": f"DPoP {token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return headers
