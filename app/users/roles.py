"""The roles there are (a module of its own: the CLI's parser lists them without loading more)."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """An admin may use the admin API; a user has the account routes."""

    user = "user"
    admin = "admin"
