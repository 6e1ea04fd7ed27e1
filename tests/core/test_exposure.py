"""Routes declare their exposure next to their definition (app.core.exposure); the application
collects the markers for the identity middleware."""

from __future__ import annotations

from app.core.exposure import ExposureMap
from app.core.settings import Environment
from app.main import create_app
from tests.conftest import Harness, make_settings

# What was public and passive before the routes declared it themselves (app/main.py's
# PUBLIC_PATHS and PASSIVE_PATHS): the markers must reproduce it exactly.
PUBLIC = {
    "/auth/login",
    "/auth/token",
    "/auth/refresh",
    "/healthz",
    "/readyz",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
    "/redoc/redoc.standalone.js",
    "/openapi.json",
    "/demo",
    "/auth/introspect",
    "/auth/register",
    "/metrics",
    "/.well-known/jwks.json",
    "/.well-known/openid-configuration",
    "/.well-known/oauth-authorization-server",
    # Account recovery (issue 21): the emailed token in the body is the credential.
    "/auth/password-reset/request",
    "/auth/password-reset/confirm",
    "/auth/verify-email/confirm",
    # The second step of a two-step login: the challenge in the body is the credential.
    "/auth/login/mfa",
    # Passkey ceremonies of a login: the ceremony (and the challenge) is the credential.
    "/auth/login/mfa/passkey-options",
    "/auth/passkeys/login/options",
    "/auth/passkeys/login",
}
PASSIVE = {"/auth/session-status"}


def _exposure(environment: Environment) -> ExposureMap:
    # Only built, never started: no database, no hashing.
    settings = make_settings("sqlite://", environment=environment, password_hash_profile="owasp")
    app = create_app(settings, configure_logs=False)
    exposure: ExposureMap = app.state.exposure
    return exposure


def test_declared_exposure_is_the_documented_one() -> None:
    for environment in (Environment.test, Environment.production):
        exposure = _exposure(environment)
        assert exposure.public_paths == PUBLIC, environment
        assert exposure.passive_paths == PASSIVE, environment


async def test_public_routes_ignore_a_bad_token_and_protected_ones_refuse_it(
    harness: Harness,
) -> None:
    bad = {"Authorization": "Bearer not-a-token"}
    for path in ("/docs", "/redoc", "/openapi.json", "/healthz", "/.well-known/jwks.json"):
        response = await harness.client.get(path, headers=bad)
        assert response.status_code == 200, (path, response.text)
    refused = await harness.client.get("/auth/me", headers=bad)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_token"
