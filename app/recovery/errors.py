from __future__ import annotations

from app.core.errors import DomainError


class ResetTokenInvalid(DomainError):
    status_code = 400
    code = "reset_token_invalid"
    message = (
        "This reset token is unknown, used, superseded by a newer request or expired; "
        "request a new one."
    )


class VerificationTokenInvalid(DomainError):
    status_code = 400
    code = "verification_token_invalid"
    message = "This verification token is unknown, used, superseded or expired; ask for a new link."


class EmailAlreadyVerified(DomainError):
    status_code = 409
    code = "email_already_verified"
    message = "This account's email address is verified already."


class RegistrationPasswordRequired(DomainError):
    status_code = 400
    code = "password_required"
    message = (
        "This link confirms a registration: send it with the password the account was "
        "registered with."
    )


class RegistrationPasswordMismatch(DomainError):
    status_code = 400
    code = "password_mismatch"
    message = (
        "This is not the password this registration was made with. After a few wrong ones the "
        "link stops working; registering again sends a new one."
    )
