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

    def __init__(self, code: str, message: str, nonce: str | None = None) -> None:
        super().__init__(message)
        self.code = code  # type: ignore[misc]
        self.nonce = nonce

    def headers(self) -> dict[str, str]:
        headers = {
            "WWW-Authenticate": f'DPoP realm="authsvc", error="{self.code}", '
            f'error_description="{self.detail}"',
            "X-Auth-Error": self.code,
        }
        if self.nonce:
            headers["DPoP-Nonce"] = self.nonce
        return headers


def resource_error(error: InvalidDPoPProof | UseDPoPNonce) -> DPoPChallenge:
    return DPoPChallenge(error.code, error.detail, getattr(error, "nonce", None))
