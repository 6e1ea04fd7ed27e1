from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.settings import (
    DEV_SECRET_KEY,
    MIN_SECRET_BITS,
    Environment,
    PasswordHashProfile,
    Settings,
    estimated_entropy_bits,
)

STRONG = "k3J9-vQ2_zR8wL5mN1pT6yX4cB7hF0sDgA"  # random-looking: over 128 bits


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def _production(**values: object) -> Settings:
    return _settings(environment="production", jwt_issuer="https://a", **values)


def test_production_refuses_development_secret() -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        _settings(environment="production", secret_key=DEV_SECRET_KEY, jwt_issuer="https://a")


def test_production_requires_issuer() -> None:
    with pytest.raises(ValidationError, match="JWT_ISSUER"):
        _settings(environment="production", secret_key=STRONG)


def test_production_refuses_the_test_password_hash_profile() -> None:
    production = {"environment": "production", "secret_key": STRONG, "jwt_issuer": "https://a"}
    with pytest.raises(ValidationError, match="PASSWORD_HASH_PROFILE=test"):
        _settings(**production, password_hash_profile="test")
    assert _settings(**production).password_hash_profile is PasswordHashProfile.owasp
    for environment in ("development", "test"):
        allowed = _settings(environment=environment, password_hash_profile="test")
        assert allowed.password_hash_profile is PasswordHashProfile.test


def test_production_defaults() -> None:
    settings = _settings(environment="production", secret_key=STRONG, jwt_issuer="https://a")
    assert settings.idle_timeout == 24 * 3600
    assert settings.json_logs


def test_development_defaults() -> None:
    settings = _settings()
    assert settings.environment is Environment.development
    assert settings.idle_timeout == 2 * 3600
    assert settings.access_token_ttl == 300
    assert settings.refresh_reuse_interval == 30
    assert settings.session_absolute_lifetime == 30 * 24 * 3600
    assert settings.database_url.startswith("sqlite")


def test_short_secret_and_inconsistent_durations_refused() -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY"):
        _settings(secret_key="short")
    with pytest.raises(ValidationError, match="SESSION_IDLE_TIMEOUT"):
        _settings(session_idle_timeout=7200, session_absolute_lifetime=3600)


def test_cors_origins_from_json_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", '["https://app.example.com"]')
    assert _settings().cors_origins == ["https://app.example.com"]


def test_env_example_documents_every_setting() -> None:
    text = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"\n{name.upper()}=" in text, name


@pytest.mark.parametrize(
    "weak",
    [
        pytest.param(" " * 32, id="32-spaces"),
        pytest.param("a" * 64, id="one-character"),
        pytest.param("ab" * 24, id="two-characters"),
        pytest.param("correct horse battery staple!!!!", id="short-passphrase"),
    ],
)
def test_production_refuses_a_weak_secret_key(weak: str) -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY looks weak"):
        _production(secret_key=weak)


def test_production_accepts_a_generated_secret_key() -> None:
    generated = subprocess.run(
        [sys.executable, "-m", "app", "secret"],
        capture_output=True,
        text=True,
        check=True,
        # The command needs no configuration, not even a valid one.
        env={**os.environ, "ENVIRONMENT": "production", "SECRET_KEY": " " * 32},
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.strip()
    assert len(generated) == 64
    assert _production(secret_key=generated).secret_key.get_secret_value() == generated
    assert estimated_entropy_bits(generated) >= MIN_SECRET_BITS


@pytest.mark.parametrize("issuer", ["http://auth.example.com", "auth.example.com"])
def test_production_refuses_an_issuer_that_is_not_https(issuer: str) -> None:
    with pytest.raises(ValidationError, match="JWT_ISSUER must be an https:// URL"):
        _settings(environment="production", secret_key=STRONG, jwt_issuer=issuer)
    assert _settings(jwt_issuer=issuer).issuer == issuer  # development: as given


def test_production_names_each_risky_setting_it_accepts() -> None:
    smtp = "smtp://authsvc:pw@mail.example.com:587"
    careful = _production(secret_key=STRONG, metrics_token="m" * 32, smtp_url=smtp)
    assert careful.production_warnings == []
    risky = _production(secret_key=STRONG, rate_limits_enabled=False)
    assert [name for name, _ in risky.production_warnings] == [
        "RATE_LIMITS_ENABLED",
        "METRICS_TOKEN",
        "SMTP_URL",
    ]
    assert _settings(rate_limits_enabled=False).production_warnings == []


def test_webauthn_origins_are_exact_origins() -> None:
    with pytest.raises(ValidationError, match="WEBAUTHN_ORIGINS"):
        _settings(webauthn_origins=["https://auth.example.com/"])  # a browser sends no "/"
    with pytest.raises(ValidationError, match="WEBAUTHN_ORIGINS"):
        _settings(webauthn_origins=["auth.example.com"])
    settings = _settings(webauthn_origins=["http://localhost:8000"], webauthn_rp_id="localhost")
    assert (settings.passkey_rp_id, settings.passkey_origins) == (
        "localhost",
        ["http://localhost:8000"],
    )
    defaults = _settings(jwt_issuer="https://auth.example.com:8443")
    assert (defaults.passkey_rp_id, defaults.passkey_origins) == (
        "auth.example.com",
        ["https://auth.example.com:8443"],
    )


def test_production_refuses_plain_http_webauthn_origins() -> None:
    with pytest.raises(ValidationError, match="WEBAUTHN_ORIGINS must be https"):
        _production(secret_key=STRONG, webauthn_origins=["http://auth.example.com"])
    ok = _production(secret_key=STRONG, webauthn_origins=["https://auth.example.com"])
    assert ok.passkey_origins == ["https://auth.example.com"]
