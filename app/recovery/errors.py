from __future__ import annotations

from app.core.errors import DomainError


class ResetTokenInvalid(DomainError):
    status_code = 400
    code = "reset_token_invalid"
    message = (
        "This reset token is unknown, used, superseded by a newer request or expired; "
        "request a new one."
    )
