"""The refresh-token format: what a token looks like, its hash at rest, and its successor."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

from app.core.security import b64url, derive_key, new_opaque_token

_SESSION_ID_CHARS = 22  # 16 bytes in unpadded base64url


class RefreshTokenCodec:
    """Refresh tokens, their hashes for storage, and each token's one successor.

    A token is `<session id>.<256 random bits>`, both base64url. The session id is not a
    secret (access tokens carry it as `sid`); naming the session lets the service check the
    CSRF token and the per-session rate limit before touching the database, and lock the
    session by primary key. Nothing trusts it: the rotation checks that the token's stored
    row belongs to that session.

    The successor is `<session id>.HMAC(successor_key, token)`: any replica can recompute it,
    so a retried or concurrent refresh of the same token answers with the same successor
    without storing it.
    """

    def __init__(self, secret: str) -> None:
        self._hash_key = derive_key(secret, "refresh-token-hash/v1")
        self._successor_key = derive_key(secret, "refresh-token-successor/v1")

    def new_token(self, session_id: uuid.UUID) -> str:
        return f"{b64url(session_id.bytes)}.{new_opaque_token()}"

    def hash(self, token: str) -> bytes:
        return hmac.new(self._hash_key, token.encode(), hashlib.sha256).digest()

    def successor(self, token: str, session_id: uuid.UUID) -> str:
        mac = hmac.new(self._successor_key, token.encode(), hashlib.sha256).digest()
        return f"{b64url(session_id.bytes)}.{b64url(mac)}"

    @staticmethod
    def session_of(token: str) -> uuid.UUID | None:
        """The session a token names, or None for a token without one (issued before tokens
        named their session, or not ours)."""
        prefix, dot, _ = token.partition(".")
        if not dot or len(prefix) != _SESSION_ID_CHARS:
            return None
        try:
            return uuid.UUID(bytes=base64.urlsafe_b64decode(prefix + "=="))
        except ValueError:
            return None
