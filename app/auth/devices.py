"""Device tokens (OWASP "Slow Down Online Guessing Attacks with Device Cookies").

A client that has logged in to an account successfully holds a signed device token for that
account. Presented with the next login, it exempts the login from the account's lockout and
from the per-account rate limit: anyone who knows an email address can keep its lock in force,
but not against the owner's own devices. A trusted device has limits of its own instead (its
logins, and its wrong passwords, counted per device).

The token is a JWT (HS256, a key of its own derived from SECRET_KEY) naming the account (its
id, and a keyed hash of its email so that the rate limiter can match it before any database
read) and the device. It is bound to the account's password hash: a password change (or a
hash upgrade) ends the trust of every device, which then earns it again by logging in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import jwt

from app.core.security import b64url, derive_key

DEVICE_TOKEN_TYPE = "device+jwt"  # noqa: S105 - a media type
MAX_DEVICE_TOKEN_LENGTH = 1024
_ALGORITHM = "HS256"


@dataclass(frozen=True, slots=True)
class DeviceProof:
    """A device token whose signature and expiry held, for the email of the login."""

    device_id: str
    user_id: uuid.UUID
    password_tag: str


class DeviceTokenCodec:
    def __init__(self, secret: str, *, ttl: int) -> None:
        self._key = derive_key(secret, "device-token/v1")
        self._tag_key = derive_key(secret, "device-token-tags/v1")  # one key, one role
        self._ttl = ttl

    def issue(
        self,
        *,
        user_id: uuid.UUID,
        email: str,
        password_hash: str,
        now: datetime,
        device_id: str | None = None,
    ) -> str:
        """A token for this account on this device (a device keeps its id across logins, so
        its failure count follows it)."""
        iat = int(now.timestamp())
        claims = {
            "sub": str(user_id),
            "did": device_id or b64url(secrets.token_bytes(16)),
            "eml": self._tag(email),
            "pwd": self.password_tag(password_hash),
            "iat": iat,
            "exp": iat + self._ttl,
        }
        return jwt.encode(
            claims, self._key, algorithm=_ALGORITHM, headers={"typ": DEVICE_TOKEN_TYPE}
        )

    def read(self, token: str | None, *, email: str, now: datetime) -> DeviceProof | None:
        """The proof in `token` if it is ours, unexpired, and for `email` (normalised); else
        None. Never raises: a bad device token only means an untrusted client."""
        if not token or len(token) > MAX_DEVICE_TOKEN_LENGTH:
            return None
        try:
            if jwt.get_unverified_header(token).get("typ") != DEVICE_TOKEN_TYPE:
                return None
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[_ALGORITHM],
                # Expiry is checked below against our clock, not the wall clock.
                options={
                    "require": ["sub", "did", "eml", "pwd", "iat", "exp"],
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
            iat, exp = claims["iat"], claims["exp"]
            if not (isinstance(iat, int) and isinstance(exp, int)):
                return None
            # A shortened DEVICE_TOKEN_TTL applies to tokens issued before the change too.
            if min(exp, iat + self._ttl) <= now.timestamp():
                return None
            proof = DeviceProof(
                device_id=str(claims["did"]),
                user_id=uuid.UUID(str(claims["sub"])),
                password_tag=str(claims["pwd"]),
            )
        except (jwt.PyJWTError, ValueError):
            return None
        if not hmac.compare_digest(str(claims["eml"]), self._tag(email)):
            return None
        return proof

    def password_tag(self, password_hash: str) -> str:
        return self._tag("password:" + password_hash)

    def _tag(self, value: str) -> str:
        return b64url(hmac.new(self._tag_key, value.encode(), hashlib.sha256).digest()[:12])
