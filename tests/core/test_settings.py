from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.core.settings import DEV_SECRET_KEY, Environment, PasswordHashProfile, Settings

STRONG = "x" * 48


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


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
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    for name in Settings.model_fields:
        assert f"\n{name.upper()}=" in text, name
