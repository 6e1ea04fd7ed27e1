"""Who is asking: the client a request came from, as services record it."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.core.text import printable

# The scope key of a request's arrival, set by RequestEnvelopeMiddleware from the app's clock.
ARRIVED_AT = "authsvc.arrived_at"

# The width of the `ip` columns: an IPv6 address with a zone id can be longer than its 45
# characters, and such an address is no use to anyone reading the audit trail.
_MAX_IP_LENGTH = 64


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Recorded with every audit event and on new sessions."""

    ip: str | None = None
    user_agent: str | None = None
    # When the request reached the application (None outside a request: the CLI).
    arrived_at: datetime | None = None

    def __post_init__(self) -> None:
        # Only what can be stored and shown. `ip` is an X-Forwarded-For entry when the peer is
        # a trusted proxy, and the server takes whatever text is there (a 100-character one
        # failed the insert on PostgreSQL, a 500): only an IP address is kept, so anything
        # else is not recorded and counts as "unknown" in the per-IP limits. The User-Agent
        # keeps its text with control characters replaced (a NUL failed the insert too).
        if self.ip is not None and not _is_ip_address(self.ip):
            object.__setattr__(self, "ip", None)
        if self.user_agent is not None:
            object.__setattr__(self, "user_agent", printable(self.user_agent))

    @property
    def stored_user_agent(self) -> str | None:
        """The User-Agent as stored (the column holds 512 characters)."""
        return self.user_agent[:512] if self.user_agent else None


def arrival_of(scope: Mapping[str, Any]) -> datetime | None:
    """When the request of `scope` reached the application, if RequestEnvelopeMiddleware saw it
    (it keeps the clock's timestamp: a datetime is made only here, where it is read)."""
    arrived = scope.get(ARRIVED_AT)
    return datetime.fromtimestamp(arrived, UTC) if isinstance(arrived, float) else None


def _is_ip_address(host: str) -> bool:
    if len(host) > _MAX_IP_LENGTH:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
