from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.account.service import AccountService
from app.core.components import provider

AccountServiceDep = Annotated[AccountService, Depends(provider(AccountService))]
