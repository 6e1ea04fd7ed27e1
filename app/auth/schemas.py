from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.core.json_body import RequestBody
from app.core.text import PlainText
from app.users.service import PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH


class LoginRequest(RequestBody):
    email: PlainText = Field(min_length=1, max_length=320)
    password: str = Field(min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH)
    device_name: PlainText | None = Field(default=None, max_length=100)
    device_token: str | None = Field(
        default=None,
        max_length=1024,
        description="Bearer transport: the `device_token` of this client's last login to the "
        "account. It exempts the login from the account's lockout (see docs/abuse.md). "
        "Cookie transport sends it in the __Host-device_token cookie instead.",
    )


# Our refresh tokens are ~90 characters; the bound is an access token's (a client that sends
# one by mistake learns `refresh_token_invalid`, not a length error).
MAX_PRESENTED_REFRESH_TOKEN = 4096


class RefreshRequest(RequestBody):
    refresh_token: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PRESENTED_REFRESH_TOKEN,
        description="Omit in cookie transport: the token then comes from the HttpOnly cookie.",
    )


class SessionInfo(BaseModel):
    id: uuid.UUID
    idle_expires_at: datetime
    absolute_expires_at: datetime


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer", "DPoP"] = Field(
        default="Bearer",
        description="`DPoP` when the request carried a DPoP proof: the access token is bound "
        "to its key (`cnf.jkt`) and is presented as `Authorization: DPoP` with a proof.",
    )
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str | None = Field(
        description="The new refresh token; the one presented is now used (rotation)."
    )
    refresh_expires_in: int = Field(
        description="Seconds until the refresh token stops working if the session stays idle."
    )
    refresh_after: datetime = Field(description="When a client should refresh silently.")
    csrf_token: str | None = Field(
        default=None,
        description="Cookie transport only: the value to send as X-CSRF-Token (also in the "
        "__Host-csrf_token cookie, which a frontend on another origin cannot read).",
    )
    device_token: str | None = Field(
        default=None,
        description="Login, bearer transport: keep it and send it with this client's next "
        "login to the account (cookie transport: set as the __Host-device_token cookie).",
    )
    session: SessionInfo


class OAuthTokenResponse(BaseModel):
    """RFC 6749 §5.1 token response (used by the /docs Authorize button)."""

    access_token: str
    token_type: Literal["Bearer", "DPoP"] = "Bearer"  # noqa: S105 - a scheme name
    expires_in: int
    # Absent for client_credentials (RFC 6749 §4.4.3: no refresh token).
    refresh_token: str | None = None
    scope: str | None = None


class SessionStatusSession(BaseModel):
    id: uuid.UUID
    user: str
    created_at: datetime
    idle_expires_at: datetime
    absolute_expires_at: datetime
    idle_seconds_remaining: int
    absolute_seconds_remaining: int
    amr: list[str] = Field(description="How the user proved who they are (RFC 8176 methods).")
    acr: str = Field(
        description="`mfa` while a second factor proved within STEP_UP_TTL counts, else `pwd`."
    )
    auth_time: datetime = Field(description="When the login checked the first factor.")
    factor_at: datetime | None = Field(description="When a second factor was last proved.")
    acr_expires_at: datetime | None = Field(description="When an `mfa` acr falls back.")


class TokenStatus(BaseModel):
    valid: bool
    expires_in: int


class SessionStatusResponse(BaseModel):
    session: SessionStatusSession
    token: TokenStatus
    server_time: datetime
    refresh_after: datetime
    message: str
    success: bool


class MeResponse(BaseModel):
    id: uuid.UUID
    email: str
    role: str
    is_active: bool
