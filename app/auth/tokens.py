"""Access tokens: RFC 9068-style JWTs signed with the key ring, verified per RFC 8725."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeGuard

import jwt

from app.auth.errors import InvalidToken, TokenExpired
from app.keys.service import KeySet

ACCESS_TOKEN_TYPE = "at+jwt"  # noqa: S105 - a media type (RFC 9068)
# RFC 9068 §4: verifiers accept the type with or without the "application/" prefix.
_ACCEPTED_TYPES = frozenset({ACCESS_TOKEN_TYPE, "application/" + ACCESS_TOKEN_TYPE})
# Beyond this no honest token lives (year ~2286); bigger values would overflow datetime.
_MAX_TIMESTAMP = 10**10
_VERIFIED_CACHE_SIZE = 4096
MAX_TOKEN_LENGTH = 4096
# Headers that would let a token choose its own verification key, or demand extensions we do
# not implement. Their presence alone is a rejection (RFC 8725 §3.10, RFC 7515 §4.1.11).
_FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256", "crit", "b64"})
_REQUIRED_CLAIMS = ("iss", "aud", "sub", "sid", "jti", "iat", "nbf", "exp")


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    role: str
    jti: str
    issued_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    token: str
    expires_at: datetime
    expires_in: int


class AccessTokenCodec:
    def __init__(self, keys: KeySet, *, issuer: str, audience: str, ttl: int, leeway: int) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl
        self._leeway = leeway
        self._verified: dict[str, AccessClaims] = {}

    def issue(
        self,
        *,
        user_id: uuid.UUID,
        session_id: uuid.UUID,
        role: str,
        now: datetime,
        not_after: datetime | None = None,
    ) -> IssuedAccessToken:
        """A token for the session; it never outlives the session's absolute deadline, so a
        verifier that only checks signatures (JWKS) cannot accept it past that point."""
        iat = int(now.timestamp())
        exp = iat + self._ttl
        if not_after is not None:
            exp = max(iat + 1, min(exp, int(not_after.timestamp())))
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": str(user_id),
            "sid": str(session_id),
            "jti": uuid.uuid4().hex,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "role": role,
        }
        signer = self._keys.ring.signer
        token = jwt.encode(
            claims,
            signer.private_key,
            algorithm=signer.algorithm,
            headers={"kid": signer.kid, "typ": ACCESS_TOKEN_TYPE},
        )
        expires_at = datetime.fromtimestamp(exp, now.tzinfo)
        return IssuedAccessToken(token=token, expires_at=expires_at, expires_in=exp - iat)

    def verify(self, token: str, *, now: datetime) -> AccessClaims:
        """Signature and claims, per RFC 8725. A token verified once is remembered (exact bytes
        only) so that a gateway presenting it on every request pays for the signature once; its
        expiry is still checked every time, and revocation is the session check's job.
        Remembered verifications outlive a key reload: a key leaves the ring only after every
        token it signed has expired."""
        cached = self._verified.get(token)
        if cached is not None:
            self._check_expiry(int(cached.expires_at.timestamp()), now.timestamp())
            return cached
        claims = self._verify_uncached(token, now)
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))  # evict the oldest entry
        self._verified[token] = claims
        return claims

    def _check_expiry(self, exp: int, ts: float) -> None:
        if exp <= ts - self._leeway:
            raise TokenExpired()

    def _verify_uncached(self, token: str, now: datetime) -> AccessClaims:
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("The access token is too long.")
        header = _header(token)
        key = self._keys.ring.verifiers.get(header["kid"])
        if key is None or header.get("alg") != key.algorithm:
            raise InvalidToken()
        try:
            payload = jwt.decode(
                token,
                key.public_key,
                algorithms=[key.algorithm],
                audience=self._audience,
                issuer=self._issuer,
                # Time claims are checked below against our clock, with one stable error code.
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "require": list(_REQUIRED_CLAIMS),
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken() from exc
        return self._claims(payload, now)

    def _claims(self, payload: dict[str, Any], now: datetime) -> AccessClaims:
        iat, nbf, exp = (payload.get(name) for name in ("iat", "nbf", "exp"))
        if not (_is_timestamp(iat) and _is_timestamp(nbf) and _is_timestamp(exp)):
            raise InvalidToken()
        ts = now.timestamp()
        if nbf > ts + self._leeway or iat > ts + self._leeway:
            raise InvalidToken("The access token is not valid yet.")
        self._check_expiry(exp, ts)
        try:
            user_id = uuid.UUID(str(payload["sub"]))
            session_id = uuid.UUID(str(payload["sid"]))
        except ValueError as exc:
            raise InvalidToken() from exc
        role, jti = payload.get("role"), payload["jti"]
        if not isinstance(role, str) or not isinstance(jti, str):
            raise InvalidToken()
        return AccessClaims(
            user_id=user_id,
            session_id=session_id,
            role=role,
            jti=jti,
            issued_at=datetime.fromtimestamp(iat, now.tzinfo),
            expires_at=datetime.fromtimestamp(exp, now.tzinfo),
        )


def _is_timestamp(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _MAX_TIMESTAMP


def _header(token: str) -> dict[str, Any]:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise InvalidToken() from exc
    typ = header.get("typ")
    if not isinstance(typ, str) or typ not in _ACCEPTED_TYPES:
        raise InvalidToken()
    if not isinstance(header.get("kid"), str):
        raise InvalidToken()
    if _FORBIDDEN_HEADERS & header.keys():
        raise InvalidToken()
    return header
