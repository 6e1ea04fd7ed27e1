"""Account self-service failures a client can see, each with its stable code."""

from __future__ import annotations

from app.core.ratelimit import RateLimited


class PasswordChecksInFlight(RateLimited):
    """The session's budget of password checks is taken by requests still being checked;
    each will either change the password (freeing its claim) or fail (and may end the
    session), so the client learns which by trying again shortly."""

    message = "Other password changes of this session are being checked; retry shortly."

    def __init__(self) -> None:
        super().__init__(retry_after=1)
