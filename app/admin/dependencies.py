from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.account.dependencies import AccountFactorsDep
from app.auth.dependencies import get_current_session
from app.auth.middleware import Authenticated
from app.core.dependencies import SettingsDep
from app.core.errors import ForbiddenError

ADMIN_ROLE = "admin"


async def require_admin(
    auth: Annotated[Authenticated, Depends(get_current_session)],
    factors: AccountFactorsDep,
    settings: SettingsDep,
) -> Authenticated:
    # The role is read from the session row (users table), not the token, so a demotion
    # takes effect on the next request.
    if auth.session.role != ADMIN_ROLE:
        raise ForbiddenError("This needs the admin role.")
    # With ADMIN_REQUIRES_STEP_UP, also a second factor proved recently (docs/mfa.md).
    if settings.admin_requires_step_up:
        factors.require_recent_factor(auth.session)
    return auth


AdminSession = Annotated[Authenticated, Depends(require_admin)]
