from __future__ import annotations

from app.core.errors import DomainError, NotFoundError


class UserNotFound(NotFoundError):
    code = "user_not_found"
    message = "No such user."


class EmailTaken(DomainError):
    status_code = 409
    code = "email_taken"
    message = "A user with this email already exists."


class InvalidPassword(DomainError):
    status_code = 422
    code = "invalid_password"
    message = "Passwords must be 8 to 1024 characters long."


class PasswordUnchanged(DomainError):
    status_code = 422
    code = "password_unchanged"
    message = "The new password is the same as the current one."


class InvalidEmail(DomainError):
    status_code = 422
    code = "invalid_email"
    message = "This is not a valid email address."


class LastAdmin(DomainError):
    status_code = 409
    code = "last_admin"
    message = (
        "This is the last active admin: deactivating it would leave no one to administer "
        "the service. Make another admin first."
    )


class WrongCurrentPassword(DomainError):
    status_code = 403
    code = "invalid_current_password"
    message = "The current password is not correct."


class RegistrationClosed(DomainError):
    status_code = 403
    code = "registration_closed"
    message = "Self-registration is disabled on this service."


class InvalidRole(DomainError):
    status_code = 422
    code = "invalid_role"
    message = "No such role (see ROLES)."
