"""Who is calling: what a verified access token says."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str  # `sub`
    session_id: str | None  # `sid`: None for a token not tied to a user session
    role: str | None
    client_id: str | None
    issued_at: int  # `iat`, unix seconds
    expires_at: int  # `exp`, unix seconds
    jti: str
    claims: dict[str, Any] = field(repr=False, compare=False)
