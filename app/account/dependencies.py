from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.account.factors import AccountFactors
from app.account.service import AccountService
from app.auth.dependencies import get_current_session
from app.auth.middleware import Authenticated
from app.core.components import provider
from app.core.dependencies import SettingsDep

AccountServiceDep = Annotated[AccountService, Depends(provider(AccountService))]
AccountFactorsDep = Annotated[AccountFactors, Depends(provider(AccountFactors))]


async def recently_proved_for_password_change(
    auth: Annotated[Authenticated, Depends(get_current_session)],
    factors: AccountFactorsDep,
    settings: SettingsDep,
) -> Authenticated:
    """With PASSWORD_CHANGE_REQUIRES_STEP_UP, a session without a recent second factor gets
    401 insufficient_authentication (docs/mfa.md)."""
    if settings.password_change_requires_step_up:
        factors.require_recent_factor(auth.session)
    return auth


PasswordChangeSession = Annotated[Authenticated, Depends(recently_proved_for_password_change)]
