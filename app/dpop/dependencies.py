"""What a DPoP check needs from an HTTP request: its proof header(s), and the method and URL
the client signed, as this service received them or, for forward-auth, as the gateway says the
client sent them."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import Scope

from app.dpop.errors import InvalidDPoPProof
from app.dpop.proof import normalize_htu

DPOP_HEADER = b"dpop"


def proof_headers(scope: Scope) -> list[str]:
    """Every `DPoP` header of the request (more than one is refused by the check)."""
    return [value.decode("latin-1") for key, value in scope["headers"] if key == DPOP_HEADER]


def request_url(scope: Scope, origins: Sequence[str] = ()) -> str:
    """The URL the client addressed: the path as sent (still percent-encoded, as the client
    signed it; with any deployment prefix, root_path), on this service's origin. Query and
    fragment are not part of `htu` (RFC 9449 §4.3).

    The origin is one of `origins` (DPOP_ORIGINS): the one the Host header names, else the
    first, so a proof made for another server with the same path never counts here. Without
    `origins`, the scheme the server saw (behind TRUSTED_PROXIES, their X-Forwarded-Proto) and
    the Host header."""
    host = _header(scope, b"host")
    if host is None:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    origin = f"{scope['scheme']}://{host}"
    if origins and origin not in origins:
        origin = origins[0]
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope["path"]
    return f"{origin.rstrip('/')}{path}"


def original_request(scope: Scope, origins: Sequence[str] = ()) -> tuple[str, str]:
    """For forward-auth: the method and URL of the request the gateway is asking about.

    nginx (auth_request) sends them as X-Original-Method and X-Original-URL; Traefik's
    ForwardAuth (and others) as X-Forwarded-Method, -Proto, -Host and -Uri. Without either the
    request is its own (a direct call). A gateway that passes the client's own headers through
    (Traefik does, unless `authRequestHeaders` says otherwise) lets a client add the other
    family: when both are present they must name the same request, or the proof is refused
    (a client cannot point the check at another request than the one the gateway forwards)."""
    own_method, own_url = scope["method"], request_url(scope, origins)
    nginx = _nginx_request(scope, own_method)
    traefik = _traefik_request(scope, own_method, own_url)
    if nginx is not None and traefik is not None and not _same(nginx, traefik):
        raise InvalidDPoPProof("The gateway's forwarded method and URL headers disagree.")
    return nginx or traefik or (own_method, own_url)


def _nginx_request(scope: Scope, own_method: str) -> tuple[str, str] | None:
    method, url = _header(scope, b"x-original-method"), _header(scope, b"x-original-url")
    if method is None and url is None:
        return None
    if url is None:  # a method alone names no request to check a proof against
        raise InvalidDPoPProof("The gateway sent X-Original-Method without X-Original-URL.")
    return (method or own_method).upper(), url


def _traefik_request(scope: Scope, own_method: str, own_url: str) -> tuple[str, str] | None:
    method = _header(scope, b"x-forwarded-method")
    uri = _header(scope, b"x-forwarded-uri")
    host = _first(_header(scope, b"x-forwarded-host"))
    if method is None and uri is None and host is None:
        return None
    scheme = _first(_header(scope, b"x-forwarded-proto")) or scope["scheme"]
    url = f"{scheme}://{host or _header(scope, b'host') or 'localhost'}{uri or '/'}"
    return (method or own_method).upper(), url


def _same(a: tuple[str, str], b: tuple[str, str]) -> bool:
    return a[0] == b[0] and normalize_htu(a[1]) == normalize_htu(b[1])


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1").strip()
            return text or None
    return None


def _first(value: str | None) -> str | None:
    """The first entry of a comma-separated forwarded list (the client's own hop)."""
    return value.split(",", 1)[0].strip() or None if value is not None else None
