"""Imports every table so `Base.metadata` is complete (Alembic, tests)."""

from app.audit.models import AuditEvent
from app.clients.models import ServiceClient
from app.core.db import Base
from app.dpop.models import SeenProof
from app.health.models import SchemaCompatibility
from app.keys.models import SigningKey
from app.mfa.models import (
    LoginChallenge,
    PasskeyCeremony,
    PasskeyCredential,
    RecoveryCode,
    TotpFactor,
)
from app.outbox.models import OutboxMessage
from app.recovery.models import AccountToken, PendingRegistration
from app.sessions.models import RefreshToken, Session
from app.users.models import User

__all__ = [
    "AccountToken",
    "AuditEvent",
    "Base",
    "LoginChallenge",
    "OutboxMessage",
    "PasskeyCeremony",
    "PasskeyCredential",
    "PendingRegistration",
    "RecoveryCode",
    "SeenProof",
    "RefreshToken",
    "SchemaCompatibility",
    "ServiceClient",
    "Session",
    "SigningKey",
    "TotpFactor",
    "User",
]
