"""The kit's configuration: one frozen object, built in code or from the environment."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

# The asymmetric algorithms the auth service can sign with (its JWT_ALGORITHM choices). A
# symmetric one (HS256) is never accepted: with it the public key would become a MAC secret.
DEFAULT_ALGORITHMS = ("ES256", "EdDSA", "RS256")
_ASYMMETRIC = frozenset({"ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512", "PS256"})
# The service's longest ACCESS_TOKEN_TTL: a revoked session cannot hold a token older than that.
DEFAULT_MAX_TOKEN_LIFETIME = 3600
# DPoP proofs (RFC 9449) are signed by the client's own key: the auth service's DPOP_ALGORITHMS.
DEFAULT_DPOP_ALGORITHMS = ("ES256", "ES384", "EdDSA", "RS256", "PS256")
_DPOP_ASYMMETRIC = _ASYMMETRIC | {"PS384", "PS512"}


@dataclass(frozen=True, slots=True)
class KitConfig:
    issuer: str  # the auth service's base URL: discovery is fetched from there
    audience: str  # the `aud` our access tokens must carry (the service's JWT_AUDIENCE)
    # This service's client id at the auth service: the `aud` of the logout tokens it receives.
    client_id: str | None = None
    # The `iss` the tokens carry, when the service is reached at another address than the one
    # it names itself with (an internal URL). Default: `issuer`.
    expected_issuer: str | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway: int = 30  # seconds of clock skew allowed on exp, nbf and iat
    http_timeout: float = 2.0  # every call to the auth service (discovery, JWKS, live check)
    # At most one JWKS fetch per this many seconds: an unknown kid (or a down issuer) cannot
    # make every request wait on the network.
    min_refetch_interval: float = 10.0
    default_jwks_max_age: int = 300  # when JWKS answers without Cache-Control max-age
    required_claims: tuple[str, ...] = ("iss", "aud", "sub", "iat", "exp", "jti")
    # Tokens living longer than this are refused, and revocations are kept this long.
    max_token_lifetime: int = DEFAULT_MAX_TOKEN_LIFETIME
    logout_token_max_age: int = 120  # a logout token older than this (by iat) is refused
    live_check: bool = False  # ask the auth service (/auth/verify) on every request
    live_check_ttl: float = 2.0  # how long one answer is reused (capped at 30 s)
    live_check_cache_size: int = 10_000
    redis_url: str | None = None  # share revocations between replicas
    redis_namespace: str = "authsvc-kit"
    redis_timeout: float = 0.25  # every Redis call (connect and command)
    # Redis down: False checks tokens against the revocations this replica knows (it keeps a
    # local copy of every one it saw); True refuses every token with 503 until Redis is back.
    redis_fail_closed: bool = False
    ws_auth_timeout: float = 5.0  # a browser must send its first `authenticate` message by then
    ws_expiry_margin: float = 30.0  # `token_expiring` this long before exp (scaled down below)
    # WebSockets per session (a user's tabs share one), and per process: sockets still
    # authenticating, and all of them. Beyond these a connection is closed at once.
    ws_max_per_session: int = 32
    ws_max_pending: int = 1_000
    ws_max_connections: int = 10_000
    # Plain http:// to the auth service (keys, live checks) for a non-loopback host: only for
    # development (a compose network); anyone on the path could serve their own keys.
    allow_http: bool = False
    # DPoP-bound tokens (cnf.jkt): the proof algorithms accepted, and how far a proof's iat may
    # lie from now, either way (s); its jti is refused again for twice that.
    dpop_algorithms: tuple[str, ...] = DEFAULT_DPOP_ALGORITHMS
    dpop_iat_window: float = 60.0
    # The base URL clients call this service at (https://api.example.com, or with the prefix a
    # gateway strips: https://example.com/notes-api): a proof's htu is checked against it plus
    # the request's path. Unset: the request's own scheme and Host, or X-Forwarded-Proto/-Host
    # (and -Prefix, a path prefix the proxy stripped) when the request comes from one of
    # `trusted_proxies` (IP addresses or CIDR networks).
    public_url: str | None = None
    trusted_proxies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unsafe = set(self.algorithms) - _ASYMMETRIC
        if unsafe or not self.algorithms:
            raise ValueError(f"only asymmetric algorithms may be pinned, not {sorted(unsafe)}")
        unsafe = set(self.dpop_algorithms) - _DPOP_ASYMMETRIC
        if unsafe or not self.dpop_algorithms:
            raise ValueError(f"only asymmetric DPoP algorithms are allowed, not {sorted(unsafe)}")
        if not 0 < self.dpop_iat_window <= 3600:
            raise ValueError("dpop_iat_window must be between 0 and 3600 seconds")
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            bad = parts.query or parts.fragment or not parts.hostname
            if bad or parts.scheme not in ("https", "http"):
                raise ValueError("public_url must be an http(s) base URL without a query")
        for network in self.trusted_proxies:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
        if not self.transport_allowed(self.issuer):
            raise ValueError(
                "issuer must be the auth service's https:// base URL (http:// only for a loopback"
                " host, or with allow_http / AUTHSVC_ALLOW_HTTP=true in development)"
            )

    @property
    def token_issuer(self) -> str:
        return self.expected_issuer or self.issuer

    @property
    def base_url(self) -> str:
        return self.issuer.rstrip("/")

    def transport_allowed(self, url: str) -> bool:
        """https://, or http:// to a loopback host (or any host with `allow_http`)."""
        parts = urlsplit(url)
        if not parts.hostname or parts.scheme not in ("https", "http"):
            return False
        return parts.scheme == "https" or self.allow_http or is_loopback(parts.hostname)

    def key_source_allowed(self, url: str) -> bool:
        """A jwks_uri the discovery document may name: an allowed transport, on the host of
        the issuer we fetch from or of the one the tokens name (no third-party key source)."""
        hosts = {urlsplit(self.issuer).hostname, urlsplit(self.token_issuer).hostname}
        return self.transport_allowed(url) and urlsplit(url).hostname in hosts

    def with_(self, **changes: Any) -> KitConfig:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> KitConfig:
        """AUTHSVC_ISSUER, AUTHSVC_AUDIENCE and AUTHSVC_CLIENT_ID, plus the optional
        AUTHSVC_EXPECTED_ISSUER, AUTHSVC_ALGORITHMS (comma-separated), AUTHSVC_LEEWAY,
        AUTHSVC_MAX_TOKEN_LIFETIME, AUTHSVC_LIVE_CHECK, AUTHSVC_LIVE_CHECK_TTL,
        AUTHSVC_REDIS_URL, AUTHSVC_REDIS_FAIL_CLOSED, AUTHSVC_WS_EXPIRY_MARGIN,
        AUTHSVC_WS_MAX_PER_SESSION, AUTHSVC_WS_MAX_PENDING, AUTHSVC_WS_MAX_CONNECTIONS,
        AUTHSVC_ALLOW_HTTP, AUTHSVC_DPOP_ALGORITHMS and AUTHSVC_TRUSTED_PROXIES (comma-separated),
        AUTHSVC_DPOP_IAT_WINDOW, AUTHSVC_PUBLIC_URL (and the others of the table in
        docs/downstream.md)."""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, convert in _ENV.items():
            raw = source.get(f"AUTHSVC_{name.upper()}", "").strip()
            if raw:
                values[name] = convert(raw)
        values.update(overrides)
        for required in ("issuer", "audience"):
            if not values.get(required):
                raise ValueError(f"AUTHSVC_{required.upper()} is not set")
        return cls(**values)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _flag(raw: str) -> bool:
    return raw.lower() in {"1", "true", "yes", "on"}


def _names(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


_ENV: dict[str, Any] = {
    "issuer": str,
    "audience": str,
    "client_id": str,
    "expected_issuer": str,
    "algorithms": _names,
    "leeway": int,
    "http_timeout": float,
    "max_token_lifetime": int,
    "logout_token_max_age": int,
    "live_check": _flag,
    "live_check_ttl": float,
    "redis_url": str,
    "redis_namespace": str,
    "redis_timeout": float,
    "redis_fail_closed": _flag,
    "ws_auth_timeout": float,
    "ws_expiry_margin": float,
    "ws_max_per_session": int,
    "ws_max_pending": int,
    "ws_max_connections": int,
    "allow_http": _flag,
    "dpop_algorithms": _names,
    "dpop_iat_window": float,
    "public_url": str,
    "trusted_proxies": _names,
}
