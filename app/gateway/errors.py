from __future__ import annotations

from app.core.errors import DomainError


class IntrospectionClientUnauthorized(DomainError):
    status_code = 401
    code = "invalid_client"
    message = "Introspection requires a client id and secret from INTROSPECTION_CLIENTS (Basic)."

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="authsvc-introspection"'}
