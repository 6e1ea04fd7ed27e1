"""Server-provided DPoP nonces (RFC 9449 §8) that every replica accepts without sharing state.

A nonce is a time step and a MAC of it under a key derived from SECRET_KEY, which every replica
has: `<step>.<mac>`. It is valid in its own step and the next one, so a nonce lives between one
and two steps; a client that presents an older one gets `use_dpop_nonce` with a fresh one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from app.dpop.errors import UseDPoPNonce


class NonceIssuer:
    def __init__(self, secret: bytes, *, step_seconds: int = 300) -> None:
        # A key of its own: a nonce MAC is never a valid MAC of anything else the secret signs.
        self._key = hmac.new(secret, b"authsvc dpop nonce v1", hashlib.sha256).digest()
        self.step_seconds = step_seconds

    def current(self, now: float) -> str:
        return self._for_step(int(now // self.step_seconds))

    def check(self, nonce: str | None, now: float) -> None:
        """Raise UseDPoPNonce (with a fresh nonce) unless `nonce` is current or just past."""
        step = int(now // self.step_seconds)
        # compare_digest takes ASCII text only; ours is, so anything else is not ours.
        if (
            nonce is not None
            and nonce.isascii()
            and any(hmac.compare_digest(nonce, self._for_step(s)) for s in (step, step - 1))
        ):
            return
        message = "A DPoP nonce is required." if nonce is None else "The DPoP nonce is stale."
        raise UseDPoPNonce(self.current(now), message)

    def _for_step(self, step: int) -> str:
        mac = hmac.new(self._key, str(step).encode(), hashlib.sha256).digest()[:18]
        return f"{step}.{base64.urlsafe_b64encode(mac).decode()}"
