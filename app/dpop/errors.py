"""DPoP failures, each with its stable code. As RFC 9449 §5 and §7.1 have it: 400 where a token
is being obtained (login, refresh, the token endpoint), 401 with a `DPoP` challenge where a
token is being used; `resource_error` turns the first kind into the second."""

from __future__ import annotations

from app.core.errors import DomainError, UnauthorizedError


class InvalidDPoPProof(DomainError):
    status_code = 400
    code = "invalid_dpop_proof"
    message = "The DPoP proof is missing or invalid."


class UseDPoPNonce(DomainError):
    """The server wants a nonce in the proof (RFC 9449 §8): the client retries with this one."""

    status_code = 400
    code = "use_dpop_nonce"
    message = "Retry with the nonce given in the DPoP-Nonce header."

    def __init__(self, nonce: str, message: str | None = None) -> None:
        super().__init__(message)
        self.nonce = nonce

    def headers(self) -> dict[str, str]:
        return {"DPoP-Nonce": self.nonce}


class DPoPChallenge(UnauthorizedError):
    """A resource request refused for its proof: 401 with `WWW-Authenticate: DPoP`."""

    def __init__(
        self,
        code: str,
        message: str,
        algs: str | None = None,
        nonce: str | None = None,
        *,
        error: str | None = None,
    ) -> None:
        """`error`: the challenge's RFC 6750 / 9449 error, when it is not the code itself (a
        token failure such as `token_expired` is `invalid_token` there, as under Bearer)."""
        super().__init__(message)
        self.code = code  # type: ignore[misc]
        self.algs = algs
        self.nonce = nonce
        self.error = error or code

    @classmethod
    def for_token(cls, refusal: UnauthorizedError, algs: str) -> DPoPChallenge:
        """A token refusal (expired, revoked, ...) of a request made under the DPoP scheme:
        the same code and message, challenged with the scheme the client used."""
        return cls(refusal.code, refusal.detail, algs, error="invalid_token")

    def headers(self) -> dict[str, str]:
        # RFC 9449 §7.1: the DPoP scheme's challenge, with the algorithms a proof may use.
        description = self.code if self.error != self.code else self.detail
        challenge = f'DPoP realm="authsvc", error="{self.error}", error_description="{description}"'
        if self.algs:
            challenge += f', algs="{self.algs}"'
        headers = {"WWW-Authenticate": challenge, "X-Auth-Error": self.code}
        if self.nonce:
            headers["DPoP-Nonce"] = self.nonce
        return headers


def resource_error(
    error: InvalidDPoPProof | UseDPoPNonce, algs: str | None = None
) -> DPoPChallenge:
    return DPoPChallenge(error.code, error.detail, algs, getattr(error, "nonce", None))
