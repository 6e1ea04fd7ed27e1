"""authsvc-kit: accept authsvc access tokens in a Python service.

from authsvc_kit import Kit
from authsvc_kit.fastapi import Identity

kit = Kit.from_env()                       # AUTHSVC_ISSUER, AUTHSVC_AUDIENCE, AUTHSVC_CLIENT_ID
app = FastAPI(lifespan=kit.lifespan)
kit.install(app)                           # middleware + POST /backchannel-logout

Routes take `Identity` (a user) or `Caller` (a user or a service client); outgoing calls as a
service use `ClientCredentialsAuth` (an httpx.Auth, authsvc_kit.outgoing). DPoP-bound tokens
(`cnf.jkt`) are accepted only as `Authorization: DPoP` with a valid proof (authsvc_kit.dpop).
"""

from authsvc_kit.backchannel import BACKCHANNEL_EVENT, BackchannelReceiver
from authsvc_kit.config import KitConfig
from authsvc_kit.dpop import Presentation
from authsvc_kit.errors import (
    AuthError,
    ClientDisabled,
    InvalidDPoPProof,
    InvalidToken,
    IssuerUnavailable,
    NotAuthenticated,
    RevocationsUnavailable,
    SessionRevoked,
    TokenExpired,
    TokenRequestFailed,
    UseDPoPNonce,
    UserTokenRequired,
)
from authsvc_kit.kit import Kit
from authsvc_kit.middleware import AuthMiddleware
from authsvc_kit.outgoing import ClientCredentialsAuth
from authsvc_kit.principal import Principal
from authsvc_kit.revocation import MemoryRevocations, Revocation
from authsvc_kit.websocket import (
    AUTHENTICATION_REQUIRED,
    INVALID_DPOP_PROOF,
    PRINCIPAL_SCOPE_KEY,
    SESSION_REVOKED,
    TOKEN_EXPIRED,
)

__all__ = [
    "AUTHENTICATION_REQUIRED",
    "BACKCHANNEL_EVENT",
    "INVALID_DPOP_PROOF",
    "PRINCIPAL_SCOPE_KEY",
    "SESSION_REVOKED",
    "TOKEN_EXPIRED",
    "AuthError",
    "AuthMiddleware",
    "BackchannelReceiver",
    "ClientCredentialsAuth",
    "ClientDisabled",
    "InvalidDPoPProof",
    "InvalidToken",
    "IssuerUnavailable",
    "Kit",
    "KitConfig",
    "MemoryRevocations",
    "NotAuthenticated",
    "Presentation",
    "Principal",
    "Revocation",
    "RevocationsUnavailable",
    "SessionRevoked",
    "TokenExpired",
    "TokenRequestFailed",
    "UseDPoPNonce",
    "UserTokenRequired",
]
