from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from app.core.json_body import RequestBody
from app.core.text import PlainText
from app.mfa.passkeys import PasskeyProof
from app.mfa.service import FactorProof
from app.users.service import PASSWORD_MAX_LENGTH


class PasskeyProofBody(RequestBody):
    ceremony: str = Field(
        min_length=1, max_length=128, description="The `ceremony` of the options this answers."
    )
    credential: dict[str, Any] = Field(
        description="The browser's PublicKeyCredential as JSON (`credential.toJSON()`)."
    )

    def proof(self) -> PasskeyProof:
        return PasskeyProof(ceremony=self.ceremony, credential=self.credential)


class FactorProofRequest(RequestBody):
    """A second factor: exactly one of a TOTP code, a recovery code and a passkey's answer."""

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
    passkey: PasskeyProofBody | None = Field(
        default=None,
        description="A passkey's answer to options from /auth/login/mfa/passkey-options (login) "
        "or /auth/step-up/passkey-options (inside a session).",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> FactorProofRequest:
        given = [self.code, self.recovery_code, self.passkey]
        if sum(value is not None for value in given) != 1:
            raise ValueError("send exactly one of code, recovery_code and passkey")
        return self

    def proof(self) -> FactorProof:
        passkey = self.passkey.proof() if self.passkey is not None else None
        return FactorProof(code=self.code, recovery_code=self.recovery_code, passkey=passkey)


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
    methods: list[Literal["totp", "recovery_code", "passkey"]]
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
    passkeys: int


class PasskeyOptionsRequest(RequestBody):
    password: str = Field(
        min_length=1,
        max_length=PASSWORD_MAX_LENGTH,
        description="The account's password: adding a factor needs more than a session.",
    )
    name: PlainText = Field(default="Passkey", min_length=1, max_length=100)


class CeremonyResponse(BaseModel):
    ceremony: str = Field(description="Send it back with the browser's answer.")
    options: dict[str, Any] = Field(
        description="PublicKeyCredential{Creation,Request}OptionsJSON: for "
        "PublicKeyCredential.parse{Creation,Request}OptionsFromJSON()."
    )


class ChallengeRequest(RequestBody):
    challenge: str = Field(min_length=1, max_length=128)


class PasskeyLoginRequest(PasskeyProofBody):
    device_name: PlainText | None = Field(default=None, max_length=100)


class PasskeyRenameRequest(RequestBody):
    name: PlainText = Field(min_length=1, max_length=100)


class PasskeyOut(BaseModel):
    id: uuid.UUID
    name: str
    created_at: datetime
    last_used_at: datetime | None
    backed_up: bool = Field(description="Synced between devices (a multi-device passkey).")


class StepUpResponse(BaseModel):
    access_token: str = Field(description="A new access token carrying the raised acr.")
    token_type: Literal["Bearer", "DPoP"]
    expires_in: int
    acr: str
    amr: list[str]
    acr_expires_at: str = Field(description="When the raised acr falls back (ISO 8601).")
