"""DPoP (RFC 9449) on the resource side: a token bound to a key (`cnf.jkt`) is only accepted
with a fresh proof, signed by that key, for this very request.

A proof is a JWT in the `DPoP` request header: header `typ: dpop+jwt`, an allowed asymmetric
`alg`, the public `jwk`; claims `jti`, `htm` (the method), `htu` (the URL as the client saw it:
scheme, host, port and path), `iat`, and `ath` (the access token's SHA-256). Each `jti` is taken
once within twice the `iat` window (a proof older than that is refused by its `iat` anyway),
in this process or, with Redis configured, on every replica.

The URL the proof must name is the one the client used, which a service behind a gateway does
not see: `public_url` (the external base URL) replaces scheme, host and port, and prefixes the
path; otherwise `X-Forwarded-Proto`/`-Host`/`-Prefix` are believed only from `trusted_proxies`,
and failing both the request's own scheme and `Host` are used.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlsplit

import jwt
from starlette.types import Scope

from authsvc_kit.config import KitConfig
from authsvc_kit.errors import InvalidDPoPProof, InvalidToken
from authsvc_kit.principal import Principal

MAX_PROOF_LENGTH = 4096  # a proof is a few hundred bytes (an RSA-4096 one about 2 kB)
_MAX_BRACKETS = 8  # a proof's header holds one object (its jwk), its claims none
_KEYS_CACHED = 4096  # header segments (one per client key) kept parsed
# Three base64url segments, the signature's possibly empty (alg none: refused by its alg).
_COMPACT_JWS = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")
# RFC 7515 §4.1.11 critical extensions (and RFC 7797's unencoded payload): none is supported.
_UNSUPPORTED_HEADERS = frozenset({"crit", "b64"})
_MAX_JTI_LENGTH = 256
_MIN_RSA_BITS = 2048
# RFC 7638 §3.2: the members of each key type that make its thumbprint.
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}
# Members only a private (or symmetric) key has: such a jwk is refused (RFC 9449 §4.3 (6)).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# The key types an algorithm may be verified with: an ES256 proof with a P-384 key, or an
# RS256 one with an EC key, is refused rather than left to the library.
_KEY_FOR_ALG: dict[str, tuple[str, frozenset[str]]] = {
    "ES256": ("EC", frozenset({"P-256"})),
    "ES384": ("EC", frozenset({"P-384"})),
    "ES512": ("EC", frozenset({"P-521"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    **{alg: ("RSA", frozenset()) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
}
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# A WebSocket's proof may name its URL as ws(s):// or http(s)://: the same resource.
_HTTP_SCHEME = {"ws": "http", "wss": "https"}


@dataclass(frozen=True, slots=True)
class Presentation:
    """How a request presented its access token: the Authorization scheme, its `DPoP` proof
    (None when absent), and the method and URL (as the client saw it) the proof must name."""

    scheme: Literal["bearer", "dpop"]
    proof: str | None
    method: str
    url: str


class ReplayCache(Protocol):
    async def claim(self, key: str, ttl: float) -> bool:
        """True the first time `key` is claimed within `ttl` seconds, False for a replay."""
        ...

    async def aclose(self) -> None: ...


class MemoryReplayCache:
    """The jtis this process has seen, each kept `ttl` seconds. Only proofs that verified get
    here (a valid token and its key's signature), so its size follows the legitimate traffic:
    at most (requests per second) x ttl entries."""

    _EXPIRE_PER_CLAIM = 4

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # In insertion order, which is expiry order for one ttl: expired entries are taken
        # from the front, a few per claim, never by a scan of the whole cache.
        self._seen: dict[str, float] = {}

    async def claim(self, key: str, ttl: float) -> bool:
        return self.claim_now(key, ttl)

    def claim_now(self, key: str, ttl: float) -> bool:
        now = self._clock()
        self._expire(now)
        expires = self._seen.get(key)
        if expires is not None:
            if expires > now:
                return False
            del self._seen[key]  # re-inserted at the end, in its new expiry's place
        self._seen[key] = now + ttl
        return True

    def _expire(self, now: float) -> None:
        for _ in range(self._EXPIRE_PER_CLAIM):
            oldest = next(iter(self._seen.items()), None)
            if oldest is None or oldest[1] > now:
                return
            del self._seen[oldest[0]]

    def __len__(self) -> int:
        return len(self._seen)

    async def aclose(self) -> None:
        return None


class ProofChecker:
    """Enforces the binding of `cnf.jkt` tokens (RFC 9449 §7.1); unbound tokens keep working
    as Bearer tokens, and are refused under the DPoP scheme (it promises a binding)."""

    def __init__(
        self,
        config: KitConfig,
        replay: ReplayCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.algorithms = config.dpop_algorithms
        self._allowed = frozenset(config.dpop_algorithms)
        self._window = config.dpop_iat_window
        self.replay: ReplayCache = replay or MemoryReplayCache()
        self._clock = clock
        self._keys: dict[str, _ProofKey] = {}

    def error(self, detail: str) -> InvalidDPoPProof:
        return InvalidDPoPProof(detail, algs=self.algorithms)

    async def enforce(
        self, principal: Principal, token: str, presentation: Presentation | None
    ) -> None:
        """Returns when `principal` (verified from `token`) may be accepted as presented."""
        jkt = principal.dpop_jkt
        if presentation is None or presentation.scheme == "bearer":
            if jkt is not None:
                raise self.error("This access token is bound to a key: send it as DPoP.")
            return
        if jkt is None:
            raise InvalidToken("This access token is not bound to a key: send it as Bearer.")
        if presentation.proof is None:
            raise self.error("A DPoP-bound access token needs a DPoP proof.")
        proof_jkt, jti = self.verify(
            presentation.proof, method=presentation.method, url=presentation.url, token=token
        )
        if proof_jkt != jkt:
            raise self.error("The DPoP proof is not signed by the token's key.")
        ttl = 2 * self._window
        if not await self.replay.claim(_replay_key(jkt, jti), ttl):
            raise self.error("This DPoP proof has been used before.")

    def verify(self, proof: str, *, method: str, url: str, token: str) -> tuple[str, str]:
        """The stateless checks of RFC 9449 §4.3: the proof's key thumbprint and its jti."""
        if len(proof) > MAX_PROOF_LENGTH:
            raise self.error("The DPoP proof is too long.")
        segments = _COMPACT_JWS.fullmatch(proof)
        if segments is None:
            raise self.error("The DPoP proof must be a JWT of typ dpop+jwt.")
        header, payload, signature = segments.groups()
        key = self._key(header)
        claims = self._signed_claims(key, header, payload, signature)
        jti, iat = claims.get("jti"), claims.get("iat")
        if not isinstance(jti, str) or not 0 < len(jti) <= _MAX_JTI_LENGTH:
            raise self.error("The DPoP proof needs a jti.")
        if claims.get("htm") != method:
            raise self.error("The DPoP proof's htm is not this request's method.")
        htu = claims.get("htu")
        if not isinstance(htu, str) or normalize_htu(htu) != normalize_htu(url):
            raise self.error("The DPoP proof's htu is not this request's URL.")
        if isinstance(iat, bool) or not isinstance(iat, int | float) or not math.isfinite(iat):
            raise self.error("The DPoP proof needs a numeric iat.")
        if abs(self._clock() - iat) > self._window:
            raise self.error("The DPoP proof's iat is outside the accepted window.")
        if claims.get("ath") != access_token_hash(token):
            raise self.error("The DPoP proof's ath is not this access token's hash.")
        return key.jkt, jti

    def _key(self, header_segment: str) -> _ProofKey:
        """The checked key of a proof's header. A client signs every proof with one key, so
        its proofs share one header segment: parsed, checked and turned into a key once."""
        known = self._keys.get(header_segment)
        if known is None:
            known = self._checked_key(header_segment)
            if len(self._keys) >= _KEYS_CACHED:
                self._keys.clear()  # bounded: beyond it a key costs its parse again
            self._keys[header_segment] = known
        return known

    def _checked_key(self, header_segment: str) -> _ProofKey:
        header = _decoded_object(header_segment)
        if header is None or header.get("typ") != "dpop+jwt":
            raise self.error("The DPoP proof must be a JWT of typ dpop+jwt.")
        alg, jwk = header.get("alg"), header.get("jwk")
        if not isinstance(alg, str) or alg not in self._allowed:
            raise self.error("The DPoP proof's alg is not an allowed asymmetric algorithm.")
        if _UNSUPPORTED_HEADERS & header.keys():
            raise self.error("The DPoP proof's header asks for an unsupported extension.")
        if not isinstance(jwk, dict):
            raise self.error("The DPoP proof carries no jwk.")
        if _PRIVATE_MEMBERS & jwk.keys():
            raise self.error("The DPoP proof's jwk must be a public key.")
        kty, curves = _KEY_FOR_ALG[alg]
        if jwk.get("kty") != kty or (curves and jwk.get("crv") not in curves):
            raise self.error("The DPoP proof's jwk does not fit its alg.")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
            jkt = thumbprint(jwk)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
            raise self.error("The DPoP proof's jwk is not a supported public key.") from exc
        if kty == "RSA" and getattr(key.key, "key_size", 0) < _MIN_RSA_BITS:
            raise self.error("The DPoP proof's RSA key is too short.")
        return _ProofKey(key, jkt)

    def _signed_claims(
        self, key: _ProofKey, header: str, payload: str, signature: str
    ) -> dict[str, Any]:
        # PyJWT's own algorithm verifies (no hand-written crypto); jwt.decode is not used as
        # it would parse the header again and check every character of each segment in
        # Python, which doubled a proof's cost. The segments' alphabet is checked above.
        signed = f"{header}.{payload}".encode()
        try:
            valid = key.key.Algorithm.verify(signed, key.key.key, _b64decode(signature))
        except (ValueError, TypeError) as exc:
            raise self.error("The DPoP proof's signature does not verify.") from exc
        if not valid:
            raise self.error("The DPoP proof's signature does not verify.")
        claims = _decoded_object(payload)
        if claims is None:
            raise self.error("The DPoP proof's claims are not a JSON object.")
        return claims


@dataclass(frozen=True, slots=True)
class _ProofKey:
    key: jwt.PyJWK
    jkt: str  # its RFC 7638 thumbprint


def check_confirmation(claims: dict[str, Any]) -> None:
    """A token may carry no `cnf`, or one naming a key thumbprint: any other confirmation
    method (an mTLS certificate...) cannot be enforced here, so the token is refused."""
    if "cnf" not in claims:
        return
    cnf = claims["cnf"]
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if not isinstance(jkt, str) or not 0 < len(jkt) <= 128 or set(cnf) != {"jkt"}:
        raise InvalidToken("The access token's confirmation (cnf) is not supported.")


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint: the required members, sorted, no whitespace (ValueError
    for a key of another type or with members missing)."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")), ())
    if not members or any(not isinstance(jwk.get(m), str) for m in members):
        raise ValueError("not a supported public key")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64(hashlib.sha256(canonical.encode()).digest())


def access_token_hash(token: str) -> str:
    """The `ath` claim: base64url SHA-256 of the access token (RFC 9449 §4.2)."""
    return _b64(hashlib.sha256(token.encode()).digest())


def normalize_htu(url: str) -> str:
    """Scheme, host, port and path, as RFC 9449 §4.3 compares `htu`: no query or fragment,
    scheme and host in lower case, a default port dropped (RFC 3986 §6.2.3); ws(s) as http(s)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        return ""  # never equal to a request's URL
    netloc = host if port in (None, _DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    return f"{_HTTP_SCHEME.get(scheme, scheme)}://{netloc}{parts.path or '/'}"


class RequestUrl:
    """The URL a request was sent to, as the client saw it (see the module's docstring)."""

    def __init__(self, public_url: str | None, trusted_proxies: Iterable[str] = ()) -> None:
        self._public = public_url.rstrip("/") if public_url else None
        self._proxies = tuple(ipaddress.ip_network(net, strict=False) for net in trusted_proxies)

    def __call__(self, scope: Scope) -> str:
        path = _request_path(scope)
        if self._public is not None:
            return self._public + path
        headers = _headers(scope)
        scheme = str(scope.get("scheme", "http"))
        host = headers.get("host") or _server(scope)
        if self._from_trusted_proxy(scope):
            scheme = _last(headers.get("x-forwarded-proto")) or scheme
            host = _last(headers.get("x-forwarded-host")) or host
            # The part of the path the proxy stripped (nginx's /notes/ws -> /ws, Traefik's
            # StripPrefix): the client signed the path with it.
            prefix = _last(headers.get("x-forwarded-prefix")) or ""
            if prefix.startswith("/") and "?" not in prefix and "#" not in prefix:
                path = prefix.rstrip("/") + path
        return f"{scheme}://{host}{path}"

    def _from_trusted_proxy(self, scope: Scope) -> bool:
        client = scope.get("client")
        if not self._proxies or not client:
            return False
        try:
            peer = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(peer in network for network in self._proxies)


def presentation(scope: Scope, url: Callable[[Scope], str]) -> tuple[str, Presentation] | None:
    """The access token and how it was presented (Authorization: Bearer or DPoP), or None."""
    credentials = authorization(scope)
    if credentials is None:
        return None
    scheme, token = credentials
    proofs = [bytes(v).decode("latin-1") for k, v in scope.get("headers", ()) if k == b"dpop"]
    # RFC 9449 §4.3 (1): not more than one proof; a second one cannot be chosen between.
    proof = proofs[0].strip() if len(proofs) == 1 else ("" if proofs else None)
    method = str(scope.get("method", "GET"))
    return token, Presentation(scheme, proof, method, url(scope))


def authorization(scope: Scope) -> tuple[Literal["bearer", "dpop"], str] | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = bytes(value).decode("latin-1").partition(" ")
            token = token.strip()
            if scheme.lower() == "bearer" and token:
                return "bearer", token
            if scheme.lower() == "dpop" and token:
                return "dpop", token
    return None


def _decoded_object(segment: str) -> dict[str, Any] | None:
    """A base64url JSON object (a JOSE header or claims), or None. A proof holds one object
    with one inside (its jwk): deeper nesting is refused before json.loads, whose recursion
    would raise RecursionError past ~1,000 levels."""
    try:
        raw = _b64decode(segment)
        if raw.count(b"[") + raw.count(b"{") > _MAX_BRACKETS:
            return None
        decoded = json.loads(raw)
    except (ValueError, RecursionError):  # binascii.Error, JSONDecodeError, UnicodeDecodeError
        return None
    return decoded if isinstance(decoded, dict) else None


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _request_path(scope: Scope) -> str:
    raw = scope.get("raw_path")
    if isinstance(raw, bytes) and raw.startswith(b"/"):
        # As sent (still percent-encoded, as the client's htu is); never the query.
        return raw.partition(b"?")[0].decode("latin-1")
    return quote(str(scope.get("root_path", "")) + str(scope.get("path", "/")))


def _headers(scope: Scope) -> dict[str, str]:
    wanted = (b"host", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-prefix")
    return {
        name.decode(): bytes(value).decode("latin-1").strip()
        for name, value in scope.get("headers", ())
        if name in wanted
    }


def _server(scope: Scope) -> str:
    server = scope.get("server")
    if not server:
        return "localhost"
    host, port = server
    return f"{host}:{port}" if port is not None else str(host)


def _last(value: str | None) -> str | None:
    """The value our trusted proxy wrote: the last of a list (a proxy that appends to a
    client's own header leaves the client's values first)."""
    if not value:
        return None
    last = value.rsplit(",", 1)[-1].strip()
    return last or None


def _replay_key(jkt: str, jti: str) -> str:
    # Hashed: a jti is the client's choice (up to 256 characters); keyed by the key too, so
    # one client's jtis can never collide with, or pre-empt, another's.
    return _b64(hashlib.sha256(f"{jkt}.{jti}".encode()).digest())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
