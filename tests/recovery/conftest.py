"""The mail tests' real SMTP server, for the recovery flows."""

from tests.mail.conftest import smtp

__all__ = ["smtp"]
