"""Key generation, encryption at rest, and JWK export for the supported algorithms."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from app.core.security import derive_key

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


def generate_private_key(algorithm: str) -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    raise ValueError(f"unsupported signing algorithm {algorithm!r}")


def public_jwk(public_key: PublicKey, *, kid: str, algorithm: str) -> dict[str, Any]:
    jwk: dict[str, Any]
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        jwk = dict(ECAlgorithm.to_jwk(public_key, as_dict=True))
    elif isinstance(public_key, ed25519.Ed25519PublicKey):
        jwk = dict(OKPAlgorithm.to_jwk(public_key, as_dict=True))
    else:
        jwk = dict(RSAAlgorithm.to_jwk(public_key, as_dict=True))
    jwk.update({"kid": kid, "alg": algorithm, "use": "sig"})
    return jwk


_PUBLIC_TYPES = (ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, rsa.RSAPublicKey)


def algorithm_of(public_key: PublicKey) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if not isinstance(public_key.curve, ec.SECP256R1):
            raise ValueError("EC keys must be P-256 (ES256)")
        return "ES256"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    return "RS256"


def load_private_pem(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    ):
        raise ValueError("unsupported private key type (use P-256, Ed25519 or RSA)")
    return key


def load_public_pem(pem: bytes) -> PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, _PUBLIC_TYPES):
        raise ValueError("unsupported public key type (use P-256, Ed25519 or RSA)")
    return key


def thumbprint_kid(public_key: PublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:16]).rstrip(b"=").decode()


class KeyEncryptor:
    """AES-256-GCM with a key derived from SECRET_KEY; the kid is bound as associated data."""

    def __init__(self, secret: str) -> None:
        self._aead = AESGCM(derive_key(secret, "signing-key-encryption/v1"))

    def encrypt(self, private_key: PrivateKey, kid: str) -> bytes:
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, pem, kid.encode())

    def decrypt(self, blob: bytes, kid: str) -> PrivateKey:
        return load_private_pem(self._aead.decrypt(blob[:12], blob[12:], kid.encode()))


def dumps_jwk(jwk: dict[str, Any]) -> str:
    return json.dumps(jwk, sort_keys=True)
