"""What an operator's key command can be refused for, each with its stable code."""

from __future__ import annotations

from app.core.errors import NotFoundError


class KeyNotFound(NotFoundError):
    code = "key_not_found"
    message = "No signing key has this kid (`python -m app keys list` shows the live ones)."
