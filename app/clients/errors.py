"""What managing a service client can fail with, each with its stable code."""

from __future__ import annotations

from app.core.errors import DomainError, NotFoundError


class ClientNotFound(NotFoundError):
    code = "client_not_found"
    message = "No such service client."


class ClientExists(DomainError):
    status_code = 409
    code = "client_exists"
    message = "A service client with this id already exists."


class InvalidClientId(DomainError):
    status_code = 422
    code = "invalid_client_id"
    message = (
        "A client id is 1 to 64 characters: lower-case letters, digits, '.', '_' or '-', "
        "starting with a letter or digit."
    )


class InvalidClientValue(DomainError):
    status_code = 422
    code = "invalid_client_value"
    message = "Audiences and scopes are printable ASCII words without quotes or backslashes."
