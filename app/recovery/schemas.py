from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from app.core.json_body import RequestBody
from app.core.text import PlainText
from app.users.service import PASSWORD_MAX_LENGTH, PASSWORD_MIN_LENGTH


class ResetRequest(RequestBody):
    email: PlainText = Field(min_length=3, max_length=320)


class ResetConfirm(RequestBody):
    token: str = Field(min_length=1, max_length=200)
    new_password: str = Field(min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH)


class ResetAccepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    message: str = (
        "If an account exists for this address, a reset link is on its way. It works once, "
        "for a limited time."
    )


class VerifyEmailConfirm(RequestBody):
    token: str = Field(min_length=1, max_length=200)
    # A registration's link (REQUIRE_VERIFIED_EMAIL) needs the password it was made with.
    password: str | None = Field(default=None, max_length=PASSWORD_MAX_LENGTH)


class VerificationSent(BaseModel):
    status: Literal["sent"] = "sent"


class RegisterRequest(RequestBody):
    email: PlainText = Field(min_length=3, max_length=320)
    password: str = Field(min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH)


class RegistrationAccepted(BaseModel):
    status: Literal["accepted"] = "accepted"
    message: str = (
        "Check your inbox: a link to confirm the address is on its way. The account can "
        "sign in once the address is confirmed."
    )
