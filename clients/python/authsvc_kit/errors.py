"""What a caller can be refused with: a status, a stable code and the RFC 6750 challenge."""

from __future__ import annotations

import json
from typing import ClassVar


class AuthError(Exception):
    status: ClassVar[int] = 401
    code: ClassVar[str] = "invalid_token"
    message: ClassVar[str] = "The access token is malformed, has a bad signature or wrong claims."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.message)
        self.detail = detail or self.message
        # Set when the token came under the DPoP scheme: the challenge is then DPoP's (RFC
        # 9449 §7.1), naming the proof algorithms accepted.
        self.dpop_algs: tuple[str, ...] | None = None

    def headers(self) -> dict[str, str]:
        # RFC 6750 §3.1: every refused token is `invalid_token`; our code says which check.
        return {"WWW-Authenticate": self.challenge("invalid_token"), "Cache-Control": "no-store"}

    def challenge(self, error: str | None) -> str:
        if self.dpop_algs is None:
            return f'Bearer error="{error}"' if error else "Bearer"
        params = [f'error="{error}"'] if error else []
        params.append(f'algs="{" ".join(self.dpop_algs)}"')
        return "DPoP " + ", ".join(params)

    def body(self) -> bytes:
        return json.dumps({"error": {"code": self.code, "message": self.detail}}).encode()


class InvalidToken(AuthError):
    pass


class InvalidDPoPProof(AuthError):
    """A DPoP-bound token without a valid proof of its key for this request (RFC 9449 §7.1):
    sent as Bearer, without a proof, or with a proof that fails a check (the message says which)."""

    code = "invalid_dpop_proof"
    message = "A valid DPoP proof of the access token's key is required for this request."

    def __init__(self, detail: str | None = None, *, algs: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        self.dpop_algs = algs

    def headers(self) -> dict[str, str]:
        return {
            "WWW-Authenticate": self.challenge("invalid_dpop_proof"),
            "Cache-Control": "no-store",
        }


class UseDPoPNonce(InvalidDPoPProof):
    """The auth service wants a nonce in the proof (RFC 9449 §8), as a live check heard: the
    client retries with the one in `DPoP-Nonce`."""

    code = "use_dpop_nonce"
    message = "Retry with a DPoP proof carrying the nonce given in the DPoP-Nonce header."

    def __init__(self, nonce: str, *, algs: tuple[str, ...] = ()) -> None:
        super().__init__(algs=algs)
        self.nonce = nonce

    def headers(self) -> dict[str, str]:
        return {
            "WWW-Authenticate": self.challenge("use_dpop_nonce"),
            "DPoP-Nonce": self.nonce,
            "Cache-Control": "no-store",
        }


class TokenExpired(AuthError):
    code = "token_expired"
    message = "The access token has expired; refresh it."


class SessionRevoked(AuthError):
    code = "session_revoked"
    message = "The session of this access token has ended."


class NotAuthenticated(AuthError):
    code = "not_authenticated"
    message = "Authentication required: send an access token as `Authorization: Bearer <token>`."

    def headers(self) -> dict[str, str]:
        # RFC 6750 §3.1: no credentials at all gets the bare challenge, no error code.
        return {"WWW-Authenticate": self.challenge(None), "Cache-Control": "no-store"}


class ClientDisabled(AuthError):
    code = "client_disabled"
    message = "The service client of this access token has been disabled."


class UserTokenRequired(AuthError):
    """A service client's token on a route that needs a user (`Identity`): 403, since the
    token is valid and a fresh one would be refused the same way."""

    status = 403
    code = "user_token_required"
    message = "This route needs a user's access token; a service client's token is refused."

    def headers(self) -> dict[str, str]:
        # RFC 6750 §3.1: a valid token without the privileges the resource needs.
        return {
            "WWW-Authenticate": self.challenge("insufficient_scope"),
            "Cache-Control": "no-store",
        }


class Unavailable(AuthError):
    """A dependency the check needs is down: 503, never 500, and never a silent accept."""

    status = 503
    code = "issuer_unavailable"
    message = "The auth service's signing keys cannot be fetched right now; try again."

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "1", "Cache-Control": "no-store"}


class IssuerUnavailable(Unavailable):
    pass


class RevocationsUnavailable(Unavailable):
    code = "revocations_unavailable"
    message = "The shared revocation list cannot be read right now; try again."


class TokenRequestFailed(Exception):
    """An outgoing call's client_credentials token could not be had (authsvc_kit.outgoing):
    `error` is the token endpoint's RFC 6749 §5.2 code (`invalid_client`, `invalid_scope`...)
    or `unavailable` when it could not be reached, answered out of protocol, or in time."""

    def __init__(self, error: str, description: str, *, status: int | None = None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status
