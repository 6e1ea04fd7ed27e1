"""Who is asking: the client a request came from, as services record it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Recorded with every audit event and on new sessions."""

    ip: str | None = None
    user_agent: str | None = None

    @property
    def stored_user_agent(self) -> str | None:
        """The User-Agent as stored (the column holds 512 characters)."""
        return self.user_agent[:512] if self.user_agent else None
