from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from app.auth.errors import NotAuthenticated
from app.sessions.middleware import AUTH_STATE_KEY, Authenticated

# Only for the OpenAPI document (the /docs "Authorize" button); the middleware verifies.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


async def get_current_session(
    request: Request, _token: Annotated[str | None, Depends(oauth2_scheme)]
) -> Authenticated:
    auth = request.scope.get("state", {}).get(AUTH_STATE_KEY)
    if not isinstance(auth, Authenticated):
        raise NotAuthenticated()
    return auth


CurrentSession = Annotated[Authenticated, Depends(get_current_session)]
