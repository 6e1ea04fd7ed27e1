from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.core.components import provider
from app.recovery.registration import Registrations
from app.recovery.service import PasswordResets
from app.recovery.verification import EmailVerification

PasswordResetsDep = Annotated[PasswordResets, Depends(provider(PasswordResets))]
EmailVerificationDep = Annotated[EmailVerification, Depends(provider(EmailVerification))]
RegistrationsDep = Annotated[Registrations, Depends(provider(Registrations))]
