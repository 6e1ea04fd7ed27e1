"""Access-token verification (RFC 9068 profile, RFC 8725 practices) on PyJWT."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from typing import Any, TypeGuard

import jwt

from authsvc_kit.config import KitConfig
from authsvc_kit.dpop import check_confirmation
from authsvc_kit.errors import InvalidToken, TokenExpired
from authsvc_kit.keys import JwksCache
from authsvc_kit.principal import SERVICE_SUBJECT_PREFIX, Principal

MAX_TOKEN_LENGTH = 8192
_SEGMENT = re.compile(r"[A-Za-z0-9_-]{1,2048}")
_CHECKED_HEADERS: dict[tuple[str, frozenset[str], tuple[str, ...]], dict[str, Any]] = {}
_CHECKED_HEADERS_SIZE = 256
_MAX_HEADER_BRACKETS = 16  # `{` and `[` in a decoded header (its size: _SEGMENT's 2,048)
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})  # RFC 9068 §4
LOGOUT_TOKEN_TYPES = frozenset({"logout+jwt", "application/logout+jwt"})
# Headers that would let a token pick its own key or demand extensions: refused outright.
_FORBIDDEN_HEADERS = frozenset({"jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256", "crit", "b64"})


def checked_header(
    token: str, types: frozenset[str], algorithms: tuple[str, ...]
) -> dict[str, Any]:
    """The header of a token that may be verified at all: its type is the one expected here (no
    cross-JWT confusion between access and logout tokens), its alg pinned, its kid named."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("The token is too long.")
    # Every token one key signs has the same header segment: it is parsed and checked once.
    segment = token.partition(".")[0]
    cache_key = (segment, types, algorithms)
    header = _CHECKED_HEADERS.get(cache_key)
    if header is not None:
        return header
    header = _unverified_header(token)
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in types:
        raise InvalidToken("The token is not of the expected type.")
    if header.get("alg") not in algorithms or not isinstance(header.get("kid"), str):
        raise InvalidToken("The token's algorithm or key is not accepted.")
    if _FORBIDDEN_HEADERS & header.keys():
        raise InvalidToken()
    if len(_CHECKED_HEADERS) >= _CHECKED_HEADERS_SIZE:
        _CHECKED_HEADERS.clear()  # bounded: a flood of odd headers only costs the parse again
    _CHECKED_HEADERS[cache_key] = header
    return header


def _unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, read only to pick the key and refuse early; PyJWT then verifies the
    whole token. Not jwt.get_unverified_header: that decodes (and validates character by
    character) every segment, which doubled the per-request cost of PyJWT's own decode."""
    first, dot, _ = token.partition(".")
    if not dot or not _SEGMENT.fullmatch(first):
        raise InvalidToken()
    try:
        raw = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4))
        # A JOSE header is one flat object: deep nesting is refused before json.loads, whose
        # recursion would raise RecursionError (not a ValueError) past ~1,000 levels.
        if raw.count(b"[") + raw.count(b"{") > _MAX_HEADER_BRACKETS:
            raise InvalidToken()
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # binascii.Error, JSONDecodeError
        raise InvalidToken() from exc
    if not isinstance(header, dict):
        raise InvalidToken()
    return header


class AccessTokenVerifier:
    def __init__(
        self, config: KitConfig, keys: JwksCache, clock: Callable[[], float] = time.time
    ) -> None:
        self._config = config
        self._keys = keys
        self._clock = clock

    async def verify(self, token: str) -> Principal:
        header = checked_header(token, ACCESS_TOKEN_TYPES, self._config.algorithms)
        key = await self._keys.key(header["kid"])
        if key.algorithm_name != header["alg"]:
            raise InvalidToken("The token's algorithm is not its key's.")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                audience=self._config.audience,
                issuer=self._config.token_issuer,
                leeway=self._config.leeway,
                options={"require": list(self._config.required_claims)},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired() from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken() from exc
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        iat, exp = claims.get("iat"), claims.get("exp")
        if not _timestamp(iat) or not _timestamp(exp):
            raise InvalidToken()
        # The service never signs a token living longer than its longest TTL: a longer one
        # was minted by someone else holding a key, and would outlive our revocation entries.
        if exp - iat > self._config.max_token_lifetime + self._config.leeway:
            raise InvalidToken("The access token lives longer than this issuer allows.")
        sub, sid, jti = claims.get("sub"), claims.get("sid"), claims.get("jti")
        role, client_id = claims.get("role"), claims.get("client_id")
        if not isinstance(sub, str) or not sub or not isinstance(jti, str):
            raise InvalidToken()
        if sid is not None and not isinstance(sid, str):
            raise InvalidToken()
        check_confirmation(claims)
        # No `sid`: a service client's token (client_credentials) or nothing. Its subject names
        # its client, so it can never pass for a user's (whose `sub` is the user id).
        if sid is None and (
            not isinstance(client_id, str) or sub != SERVICE_SUBJECT_PREFIX + client_id
        ):
            raise InvalidToken("A token without a session must be a service client's.")
        return Principal(
            user_id=sub,
            session_id=sid,
            role=role if isinstance(role, str) else None,
            client_id=client_id if isinstance(client_id, str) else None,
            issued_at=iat,
            expires_at=exp,
            jti=jti,
            claims=claims,
        )


def _timestamp(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**10
