"""The mail tests' real SMTP server, for the recovery flows, and the strictest setup."""

from collections.abc import AsyncIterator

import pytest

from tests.conftest import Harness, start_harness
from tests.mail.conftest import SmtpServer, mail_settings, smtp

__all__ = ["smtp", "strict"]


@pytest.fixture
async def strict(database_url: str, smtp: SmtpServer) -> AsyncIterator[Harness]:
    """Open registration, and sign-in only with a proven address (REQUIRE_VERIFIED_EMAIL)."""
    settings = mail_settings(
        database_url, smtp, require_verified_email=True, allow_registration=True
    )
    async for harness in start_harness(settings):
        yield harness
