"""Who is asking: the client a request came from, as services record it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# The scope key of a request's arrival, set by RequestEnvelopeMiddleware from the app's clock.
ARRIVED_AT = "authsvc.arrived_at"


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Recorded with every audit event and on new sessions."""

    ip: str | None = None
    user_agent: str | None = None
    # When the request reached the application (None outside a request: the CLI).
    arrived_at: datetime | None = None

    @property
    def stored_user_agent(self) -> str | None:
        """The User-Agent as stored (the column holds 512 characters)."""
        return self.user_agent[:512] if self.user_agent else None


def arrival_of(scope: Mapping[str, Any]) -> datetime | None:
    """When the request of `scope` reached the application, if RequestEnvelopeMiddleware saw it."""
    arrived = scope.get(ARRIVED_AT)
    return arrived if isinstance(arrived, datetime) else None
