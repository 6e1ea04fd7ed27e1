"""Access tokens: RFC 9068-style JWTs signed with the key ring, verified per RFC 8725."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeGuard

import jwt

from app.auth.errors import InvalidToken, TokenExpired
from app.keys.service import KeyRing, KeySet
from app.sessions.policy import SessionState

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
_REQUIRED_CLAIMS = ("iss", "aud", "sub", "jti", "iat", "nbf", "exp")
# A service client's token (client_credentials) has this subject prefix and no `sid`. A client
# id never holds ':' and a user's subject is a UUID, so neither can pass for the other.
SERVICE_SUBJECT_PREFIX = "client:"


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    role: str
    jti: str
    issued_at: datetime
    expires_at: datetime
    jkt: str | None = None  # the DPoP key the token is bound to (`cnf.jkt`, RFC 9449 §6)


@dataclass(frozen=True, slots=True)
class ServiceClaims:
    """A service client's token: no user, no session (nothing slides, nothing to log out)."""

    client_id: str
    scope: str | None
    jti: str
    issued_at: datetime
    expires_at: datetime
    jkt: str | None = None


Claims = AccessClaims | ServiceClaims


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    token: str
    expires_at: datetime
    expires_in: int


@dataclass(slots=True)
class _Verified:
    """A token verified once, and the key that verified it: the entry holds only while that key
    is still in the ring (a key retired or revoked since takes its tokens with it)."""

    claims: Claims
    kid: str
    ring: KeyRing  # the ring `kid` was last seen in; another ring means "look again"


class AccessTokenCodec:
    def __init__(
        self,
        keys: KeySet,
        *,
        issuer: str,
        audience: str,
        ttl: int,
        leeway: int,
        client_id: str = "authsvc",
        service_ttl: int | None = None,
        step_up_ttl: timedelta = timedelta(seconds=900),
    ) -> None:
        self._keys = keys
        # How long a second factor counts as recent: the token's acr (docs/mfa.md).
        self.step_up_ttl = step_up_ttl
        self._issuer = issuer
        self._audience = audience
        self._client_id = client_id
        self._ttl = ttl
        self._service_ttl = ttl if service_ttl is None else service_ttl
        self._leeway = leeway
        self._verified: dict[str, _Verified] = {}

    def issue(
        self,
        *,
        user_id: uuid.UUID,
        session_id: uuid.UUID,
        role: str,
        now: datetime,
        not_after: datetime | None = None,
        jkt: str | None = None,
        session: SessionState | None = None,
    ) -> IssuedAccessToken:
        """A token for the session; it never outlives the session's absolute deadline, so a
        verifier that only checks signatures (JWKS) cannot accept it past that point. With
        `session`, it carries how the user proved who they are (OIDC's `amr`, `acr` and
        `auth_time`, as RFC 9068 §2.2.1 allows; docs/mfa.md)."""
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
            # RFC 9068 §2.2: the client the token was issued to. Every login is a first-party
            # client's (no client registration exists), so one configured id names it.
            "client_id": self._client_id,
            "role": role,
        }
        if session is not None:
            claims["auth_time"] = int(session.last_authenticated_at.timestamp())
            claims["amr"] = session.methods
            claims["acr"] = session.acr(now, self.step_up_ttl)
        _bind(claims, jkt)
        return self._sign(claims, now)

    def issue_service(
        self,
        *,
        client_id: str,
        audiences: tuple[str, ...],
        scope: str | None,
        now: datetime,
        jkt: str | None = None,
    ) -> IssuedAccessToken:
        """A service client's token: `sub` is `client:<id>`, no `sid`, no role. Its `aud` is
        this issuer's audience (what every verifier of ours checks), followed by the audiences
        the client asked for, so a service may also insist on its own name."""
        iat = int(now.timestamp())
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": [self._audience, *audiences] if audiences else self._audience,
            "sub": SERVICE_SUBJECT_PREFIX + client_id,
            "jti": uuid.uuid4().hex,
            "iat": iat,
            "nbf": iat,
            "exp": iat + self._service_ttl,
            "client_id": client_id,
        }
        if scope:
            claims["scope"] = scope
        _bind(claims, jkt)
        return self._sign(claims, now)

    def _sign(self, claims: dict[str, Any], now: datetime) -> IssuedAccessToken:
        signer = self._keys.ring.signer
        token = jwt.encode(
            claims,
            signer.private_key,
            algorithm=signer.algorithm,
            headers={"kid": signer.kid, "typ": ACCESS_TOKEN_TYPE},
        )
        iat, exp = claims["iat"], claims["exp"]
        expires_at = datetime.fromtimestamp(exp, now.tzinfo)
        return IssuedAccessToken(token=token, expires_at=expires_at, expires_in=exp - iat)

    def verify(self, token: str, *, now: datetime) -> Claims:
        """Signature and claims, per RFC 8725: a user's token (AccessClaims, with its session)
        or a service client's (ServiceClaims, no session); each caller says which it takes.
        A token verified once is remembered (exact bytes only) so that a gateway presenting
        it on every request pays for the signature once; its expiry is still checked every
        time, its key must still be in the ring (a revoked key's tokens are refused from the
        reload that drops it), and revocation of the session is the session check's job."""
        ring = self._keys.ring
        cached = self._verified.get(token)
        if cached is not None:
            if _key_still_trusted(cached, ring):
                self._check_expiry(int(cached.claims.expires_at.timestamp()), now.timestamp())
                return cached.claims
            del self._verified[token]  # verified again below: refused as any token of that key
        kid, claims = self._verify_uncached(token, ring, now)
        if len(self._verified) >= _VERIFIED_CACHE_SIZE:
            self._verified.pop(next(iter(self._verified)))  # evict the oldest entry
        self._verified[token] = _Verified(claims, kid, ring)
        return claims

    def _check_expiry(self, exp: int, ts: float) -> None:
        if exp <= ts - self._leeway:
            raise TokenExpired()

    def _verify_uncached(self, token: str, ring: KeyRing, now: datetime) -> tuple[str, Claims]:
        """The kid that verified the token, and its claims."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("The access token is too long.")
        header = _header(token)
        key = ring.verifiers.get(header["kid"])
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
        return key.kid, self._claims(payload, now)

    def _claims(self, payload: dict[str, Any], now: datetime) -> Claims:
        iat, nbf, exp = (payload.get(name) for name in ("iat", "nbf", "exp"))
        if not (_is_timestamp(iat) and _is_timestamp(nbf) and _is_timestamp(exp)):
            raise InvalidToken()
        ts = now.timestamp()
        if nbf > ts + self._leeway or iat > ts + self._leeway:
            raise InvalidToken("The access token is not valid yet.")
        self._check_expiry(exp, ts)
        # We never issue a token that lives longer than the TTL (the issuer also caps `exp` at
        # the session's absolute deadline, so honest tokens are often shorter). A longer one was
        # minted by someone else holding a signing key: refused. The bound also keeps key
        # retirement sound: a superseded key leaves the ring TTL + leeway + one reload after its
        # successor signs, when every token it signed has expired.
        service = "sid" not in payload
        if exp - iat > (self._service_ttl if service else self._ttl) + self._leeway:
            raise InvalidToken("The access token lives longer than this issuer allows.")
        jkt = _bound_key(payload)
        if service:
            return _service_claims(payload, iat, exp, now, jkt)
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
            jkt=jkt,
        )


def _bind(claims: dict[str, Any], jkt: str | None) -> None:
    """Bind the token to a DPoP key (RFC 9449 §6.1): `cnf.jkt`, its JWK SHA-256 thumbprint."""
    if jkt is not None:
        claims["cnf"] = {"jkt": jkt}


def _bound_key(payload: dict[str, Any]) -> str | None:
    """The DPoP key a token is bound to, or None. A `cnf` we cannot read is refused, never
    ignored: ignoring it would turn a bound token into a bearer one."""
    if "cnf" not in payload:
        return None
    cnf = payload["cnf"]
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if not isinstance(jkt, str) or not jkt or set(cnf) != {"jkt"}:
        raise InvalidToken("The access token's cnf claim is not a DPoP key binding.")
    return jkt


def _service_claims(
    payload: dict[str, Any], iat: int, exp: int, now: datetime, jkt: str | None
) -> ServiceClaims:
    """A token without `sid` is a service client's or nothing: its subject must be exactly
    `client:<client_id>` (never a user's id), and it carries no role."""
    client_id, sub, jti = payload.get("client_id"), payload["sub"], payload["jti"]
    scope = payload.get("scope")
    if (
        not isinstance(client_id, str)
        or not client_id
        or sub != SERVICE_SUBJECT_PREFIX + client_id
        or not isinstance(jti, str)
        or "role" in payload
        or not (scope is None or isinstance(scope, str))
    ):
        raise InvalidToken()
    return ServiceClaims(
        client_id=client_id,
        scope=scope,
        jti=jti,
        issued_at=datetime.fromtimestamp(iat, now.tzinfo),
        expires_at=datetime.fromtimestamp(exp, now.tzinfo),
        jkt=jkt,
    )


def _key_still_trusted(entry: _Verified, ring: KeyRing) -> bool:
    """Whether the key that verified `entry` is in `ring`: free while the ring is the one of the
    last look, one dict lookup after each reload. A kid is the RFC 7638 thumbprint of its public
    key (database keys and PEM files alike), so the same kid is the same key."""
    if entry.ring is ring:
        return True
    if entry.kid not in ring.verifiers:
        return False
    entry.ring = ring
    return True


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
