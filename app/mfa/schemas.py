from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from app.core.json_body import RequestBody
from app.mfa.service import FactorProof
from app.users.service import PASSWORD_MAX_LENGTH


class FactorProofRequest(RequestBody):
    """A second factor: exactly one of a TOTP code and a recovery code."""

    code: str | None = Field(
        default=None,
        pattern=r"^[0-9]{6}$",
        description="The 6-digit code the authenticator app shows now.",
    )
    recovery_code: str | None = Field(
        default=None,
        min_length=12,
        max_length=32,
        description="One of the account's recovery codes (xxxx-xxxx-xxxx); each works once.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> FactorProofRequest:
        if (self.code is None) == (self.recovery_code is None):
            raise ValueError("send exactly one of code and recovery_code")
        return self

    def proof(self) -> FactorProof:
        return FactorProof(code=self.code, recovery_code=self.recovery_code)


class TotpBeginRequest(RequestBody):
    password: str = Field(
        min_length=1,
        max_length=PASSWORD_MAX_LENGTH,
        description="The account's password: adding a factor needs more than a session.",
    )


class TotpConfirmRequest(RequestBody):
    code: str = Field(pattern=r"^[0-9]{6}$", description="The app's current 6-digit code.")


class LoginMfaRequest(FactorProofRequest):
    challenge: str = Field(
        min_length=1, max_length=128, description="The challenge POST /auth/login answered with."
    )


class MfaChallengeResponse(BaseModel):
    mfa_required: Literal[True] = True
    challenge: str = Field(description="Send it to POST /auth/login/mfa with a second factor.")
    methods: list[Literal["totp", "recovery_code"]]
    expires_in: int = Field(description="Seconds the challenge may be answered.")


class TotpEnrolmentResponse(BaseModel):
    secret: str = Field(description="Base32, for typing into an authenticator app. Shown once.")
    otpauth_uri: str = Field(description="The otpauth:// URI the QR code holds.")
    qr_svg: str = Field(description="The QR code, an inline SVG document.")


class RecoveryCodesResponse(BaseModel):
    recovery_codes: list[str] = Field(
        description="Ten single-use codes, shown this once: keep them somewhere safe."
    )


class MfaStatusResponse(BaseModel):
    totp: bool = Field(description="An authenticator app is enrolled and confirmed.")
    totp_pending: bool = Field(description="An enrolment waits for its first code.")
    recovery_codes_left: int


class StepUpResponse(BaseModel):
    access_token: str = Field(description="A new access token carrying the raised acr.")
    token_type: Literal["Bearer", "DPoP"]
    expires_in: int
    acr: str
    amr: list[str]
    acr_expires_at: str = Field(description="When the raised acr falls back (ISO 8601).")
