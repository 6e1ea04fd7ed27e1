from __future__ import annotations

from app.core.errors import NotFoundError


class SessionNotFound(NotFoundError):
    code = "session_not_found"
    message = "No such live session of yours."
