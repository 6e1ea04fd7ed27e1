"""Who is calling: what a verified access token says."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SERVICE_SUBJECT_PREFIX = "client:"


@dataclass(frozen=True, slots=True)
class Principal:
    """A user (`sub` is the user's id, `sid` the session) or a service client calling with a
    client_credentials token (`sub` is `client:<client_id>`, no `sid`): see `is_service`."""

    user_id: str  # `sub`
    session_id: str | None  # `sid`: None exactly for a service client's token
    role: str | None
    client_id: str | None
    issued_at: int  # `iat`, unix seconds
    expires_at: int  # `exp`, unix seconds
    jti: str
    claims: dict[str, Any] = field(repr=False, compare=False)

    @property
    def is_service(self) -> bool:
        """A service client's token (client_credentials): no user, no session. The verifier
        accepts a token without `sid` only as this, so it is never taken for a session."""
        return self.session_id is None

    @property
    def dpop_jkt(self) -> str | None:
        """The thumbprint of the key the token is bound to (DPoP, `cnf.jkt`), or None: a bound
        token is only accepted with a proof of that key (authsvc_kit.dpop)."""
        cnf = self.claims.get("cnf")
        jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
        return jkt if isinstance(jkt, str) else None

    @property
    def subject(self) -> str:
        return self.user_id
