from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel


class VerifyResponse(BaseModel):
    """A user's token: `sub` (the user's id), `sid`, `role`. A service client's token:
    `sub` = `client:<client_id>`, `client_id`, `scope`; no `sid`, no `role`."""

    sub: str
    sid: uuid.UUID | None = None
    role: str | None = None
    client_id: str | None = None
    scope: str | None = None


class IntrospectionResponse(BaseModel):
    """RFC 7662 §2.2. Inactive tokens get only `{"active": false}`."""

    active: bool
    token_type: Literal["access_token", "refresh_token"] | None = None
    sub: str | None = None
    sid: str | None = None
    role: str | None = None
    scope: str | None = None
    iss: str | None = None
    aud: str | None = None
    iat: int | None = None
    exp: int | None = None
    client_id: str | None = None
    # RFC 9449 §6.2: the DPoP key a bound token is bound to, as {"jkt": thumbprint}.
    cnf: dict[str, str] | None = None
