"""All configuration, read once from the environment (and an optional .env file)."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from datetime import timedelta
from email.utils import parseaddr
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEV_SECRET_KEY = "dev-insecure-secret-key-change-me-0123456789abcdef"  # noqa: S105 - refused outside dev
DEV_ISSUER = "http://localhost:8000"


# What a production SECRET_KEY must carry at least (it keys token hashes, CSRF tokens and the
# encryption of the signing keys). `python -m app secret` prints 64 characters of ~6 bits.
MIN_SECRET_BITS = 128


def estimated_entropy_bits(secret: str) -> float:
    """A generous upper bound of a secret's entropy: its length times the Shannon entropy of
    its own character frequencies. Low for repeats and tiny alphabets ("32 spaces" is 0, a
    lowercase word or a short passphrase well under 128); a random token scores its worth.
    It cannot prove a secret random, only catch the plainly weak."""
    if not secret:
        return 0.0
    counts = Counter(secret)
    total = len(secret)
    per_char = sum(n / total * math.log2(total / n) for n in counts.values())
    return per_char * total


class Environment(StrEnum):
    development = "development"
    production = "production"
    test = "test"


class SigningAlgorithm(StrEnum):
    ES256 = "ES256"
    EdDSA = "EdDSA"
    RS256 = "RS256"


class DatabasePooler(StrEnum):
    """What sits between the service and PostgreSQL (DATABASE_URL's host)."""

    none = "none"  # PostgreSQL itself, or a session-mode pooler
    transaction = "transaction"  # PgBouncer (or alike) with pool_mode = transaction


class PasswordHashProfile(StrEnum):
    """argon2id parameters for new password hashes (stored hashes verify under any profile)."""

    owasp = "owasp"  # OWASP Password Storage Cheat Sheet: m=19 MiB, t=2, p=1
    test = "test"  # the smallest costs argon2 accepts: test suites only, refused in production


# What a DPoP proof may be signed with (RFC 9449 §4.3 check 5: asymmetric only; never none or
# a MAC, whose "key" the proof would have to carry).
DPOP_ALGORITHMS = frozenset({"ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256"})
_ROLE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")


class BackchannelLogoutClient(BaseModel):
    """A downstream service told of every end of a session (OpenID Connect Back-Channel
    Logout 1.0): its `client_id` is the logout token's `aud`, its `uri` where it is POSTed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_id: str = Field(min_length=1, max_length=128)
    uri: str = Field(min_length=1, max_length=2048)


# The project's folder (app/core/settings.py is two levels down): migrations live there too.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SQLITE_PATH = PROJECT_ROOT / "data" / "auth.db"
# SMTP_URL's schemes (app/mail/transport.py says what each means).
SMTP_SCHEMES = ("smtp", "smtp+starttls", "smtps")
# The URL schemes DATABASE_URL accepts, and the SQLAlchemy driver each one means.
_DATABASE_DRIVERS = {
    "postgresql+asyncpg": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "sqlite": "sqlite+aiosqlite",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", case_sensitive=False, env_ignore_empty=True
    )

    environment: Environment = Environment.development
    # Anchored to the project, not the current folder: the CLI run from elsewhere finds the
    # same database (a relative path opened ./data/auth.db wherever it was started).
    database_url: str = f"sqlite+aiosqlite:///{DEFAULT_SQLITE_PATH}"
    # `transaction`: DATABASE_URL is a transaction-mode pooler (PgBouncer). No prepared
    # statement then outlives its transaction and no session setting is sent at connect
    # (docs/scaling.md). LISTEN (revocation push) and migrations need PostgreSQL itself:
    # DATABASE_DIRECT_URL; without it revocations reach other replicas by SESSION_CACHE_TTL.
    database_pooler: DatabasePooler = DatabasePooler.none
    database_direct_url: str | None = None
    secret_key: SecretStr = SecretStr(DEV_SECRET_KEY)

    access_token_ttl: int = Field(default=300, ge=5, le=3600)
    # Lifetime of a service client's access token (client_credentials grant, docs/downstream.md):
    # no refresh token and no session, so disabling the client is seen on the next check.
    service_token_ttl: int = Field(default=300, ge=5, le=3600)
    # None means "pick the environment's default" (2 h in development, 24 h otherwise).
    session_idle_timeout: int | None = Field(default=None, ge=10)
    session_absolute_lifetime: int = Field(default=30 * 24 * 3600, ge=60)
    session_touch_interval: int = Field(default=5, ge=0, le=300)
    refresh_reuse_interval: int = Field(default=30, ge=0, le=300)
    # How long a used refresh token is kept so that a replay is still caught as theft. None
    # (the default) keeps it as long as its session lives: theft is caught at any time.
    refresh_token_retention: int | None = Field(default=None, ge=0)
    # How long each process may reuse a session row it read (0 disables). Bounds how late a
    # revocation made on another replica is seen here; this process's own are seen at once.
    session_cache_ttl: float = Field(default=0.5, ge=0, le=1.0)
    jwt_leeway: int = Field(default=30, ge=0, le=300)

    jwt_issuer: str | None = None
    jwt_audience: str = "authsvc"
    # The `client_id` claim of every access token (RFC 9068): the first-party client, since
    # this service has no client registration.
    jwt_client_id: str = Field(default="authsvc", min_length=1, max_length=128)
    jwt_algorithm: SigningAlgorithm = SigningAlgorithm.ES256

    # Keys from PEM files instead of the database (e.g. mounted from a secret store): the
    # private key signs (its type picks ES256 / EdDSA / RS256); the public keys of previous keys
    # keep verifying while their tokens live. Files are re-read every KEY_RELOAD_INTERVAL.
    jwt_private_key_file: str | None = None
    jwt_public_key_files: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # How long gateways may cache /.well-known/jwks.json (Cache-Control max-age).
    jwks_max_age: int = Field(default=300, ge=0, le=86400)
    # How often each process re-reads the signing keys from the database.
    key_reload_interval: int = Field(default=10, ge=1, le=300)
    # How long a rotated key is published before it signs. None: JWKS_MAX_AGE plus
    # KEY_RELOAD_INTERVAL, so every cache and replica has it before the first token it signs.
    key_publish_delay: int | None = Field(default=None, ge=0)
    # Gateways allowed to call POST /auth/introspect (HTTP Basic): a JSON object of client id
    # to secret, e.g. {"nginx": "a-long-random-secret"}. Empty: introspection is closed.
    introspection_clients: Annotated[dict[str, SecretStr], NoDecode] = Field(default_factory=dict)
    # OpenID Connect Back-Channel Logout 1.0 (docs/downstream.md): a JSON list of
    # {"client_id": ..., "uri": ...}; every end of a session (not its expiry) is POSTed to each
    # uri as a logout token whose `aud` is the client_id. https:// in production.
    backchannel_logout_clients: Annotated[list[BackchannelLogoutClient], NoDecode] = Field(
        default_factory=list
    )
    # Bound on each POST to a receiver (connect, send, wait for the answer), in seconds.
    backchannel_logout_timeout: float = Field(default=5.0, gt=0, le=60)
    # How long a notification is retried before it is given up (audited as
    # backchannel.failed), in seconds from the end of the session. Default: one day.
    backchannel_logout_give_up_after: int = Field(default=24 * 3600, ge=1, le=30 * 24 * 3600)
    # The outbox worker (every replica) looks for due messages at least this often (seconds);
    # a commit that writes one wakes this replica's worker at once, and on PostgreSQL the
    # others too. Retries wait OUTBOX_RETRY_BASE seconds, doubling per attempt up to
    # OUTBOX_RETRY_MAX, with jitter.
    outbox_poll_interval: float = Field(default=5.0, gt=0, le=300)
    outbox_retry_base: float = Field(default=1.0, gt=0, le=3600)
    outbox_retry_max: float = Field(default=300.0, gt=0, le=24 * 3600)
    # Email (app/mail, docs/mail.md), delivered by the outbox worker. SMTP_URL: smtp://
    # (STARTTLS when offered), smtp+starttls:// (required) or smtps:// (TLS), with
    # user:password@ if the server wants them. Unset: each message is written to MAIL_DIR as
    # an .eml file instead (development; production warns).
    smtp_url: SecretStr | None = None
    smtp_timeout: float = Field(default=10.0, gt=0, le=120)  # one attempt, as a whole
    mail_from: str = "authsvc <no-reply@localhost>"
    mail_dir: Path = PROJECT_ROOT / "data" / "mail"
    # Templates named as app/mail/templates' files replace them, file by file.
    mail_templates_dir: Path | None = None
    mail_service_name: str = Field(default="authsvc", min_length=1, max_length=100)
    mail_give_up_after: int = Field(default=24 * 3600, ge=60, le=7 * 24 * 3600)
    # Password reset (docs/recovery.md): how long an emailed token works (seconds); where its
    # link points, `{token}` replaced by the token (a frontend page; put it after `#`, so that
    # it reaches no server log). Unset: the email carries the token alone. Refused new
    # passwords beyond PASSWORD_RESET_MAX_ATTEMPTS spend the token.
    password_reset_ttl: int = Field(default=1800, ge=60, le=24 * 3600)
    password_reset_url: str | None = None
    password_reset_max_attempts: int = Field(default=5, ge=1, le=100)
    # Email verification (docs/recovery.md): with REQUIRE_VERIFIED_EMAIL a login of an account
    # whose address is unproven is refused (403 email_not_verified) and a fresh link is sent.
    # The link: EMAIL_VERIFICATION_URL with {token} replaced (unset: the token alone).
    require_verified_email: bool = False
    email_verification_ttl: int = Field(default=24 * 3600, ge=300, le=30 * 24 * 3600)
    email_verification_url: str | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Proxies whose X-Forwarded-Proto / X-Forwarded-For are believed (uvicorn's
    # forwarded_allow_ips): a JSON list of IPs or CIDRs. Empty: forwarded headers are ignored.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Rate limits ("N/second|minute|hour"). Shared by all replicas when REDIS_URL is set,
    # per process otherwise.
    rate_limits_enabled: bool = True
    redis_url: str | None = None
    # Prefix of the Redis keys, so several deployments can share one Redis.
    rate_limit_namespace: str = "authsvc"
    # Bound on every Redis call (connect and command), in seconds. Past it, or on any Redis
    # error, the limits fail open to counting in this process (docs/deploy.md, "Redis"), and
    # Redis is tried again after REDIS_RETRY_INTERVAL seconds.
    redis_timeout: float = Field(default=0.25, gt=0, le=1.0)
    redis_retry_interval: float = Field(default=5.0, ge=0.1, le=300)
    # DPoP (RFC 9449, docs/dpop.md). DPOP_REQUIRED: every new session must be bound to a key
    # (logins, refreshes and the password / refresh_token grants without a proof are refused);
    # otherwise binding is the client's choice. DPOP_NONCE_REQUIRED: proofs must carry a server
    # nonce (RFC 9449 §8, §9), which any replica issues and accepts.
    dpop_required: bool = False
    dpop_nonce_required: bool = False
    # The proof algorithms accepted: asymmetric JWS algorithms only (JSON list).
    dpop_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DPOP_ALGORITHMS)
    )
    # How far a proof's iat may lie from the server's clock, either way, in seconds; each jti
    # is remembered twice that long.
    dpop_iat_window: int = Field(default=60, ge=5, le=600)
    # The origins (scheme://host[:port]) a proof to this service's own routes may name in its
    # htu, a JSON list. Empty: in production the issuer's origin, elsewhere the request's Host
    # (which the client chooses: fine on a laptop, not where a proof made for another server
    # must not count here).
    dpop_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Second factors (docs/mfa.md). MFA_ISSUER: the name authenticator apps show for the account.
    mfa_issuer: str = Field(default="authsvc", min_length=1, max_length=64)
    # How long the challenge of a two-step login may be answered, and how many wrong codes end it.
    mfa_challenge_ttl: int = Field(default=300, ge=30, le=1800)
    mfa_challenge_max_attempts: int = Field(default=5, ge=1, le=20)
    # The second factors' own lockout: after MFA_LOCKOUT_THRESHOLD wrong codes in a row (across
    # challenges and sessions) no code is checked for MFA_LOCKOUT_BASE_SECONDS, doubling with each
    # further one up to MFA_LOCKOUT_MAX_SECONDS. A right code resets it; a password reset does not.
    mfa_lockout_threshold: int = Field(default=5, ge=1)
    mfa_lockout_base_seconds: int = Field(default=900, ge=1)
    mfa_lockout_max_seconds: int = Field(default=86400, ge=1)
    # Passkeys (WebAuthn; docs/mfa.md): the relying party ID (a registrable domain; empty: the
    # issuer's host) and the origins a ceremony may run on, a JSON list (empty: the issuer's).
    webauthn_rp_id: str | None = None
    webauthn_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # How long a second factor counts as recent (the session's acr is "mfa" for that long after
    # a two-step login or a step-up); what the two settings after it require.
    step_up_ttl: int = Field(default=900, ge=60, le=86400)
    # Admin routes, and POST /auth/password, only for a session with a recent second factor.
    admin_requires_step_up: bool = False
    password_change_requires_step_up: bool = False
    rate_limit_login_ip: str = "20/minute"
    rate_limit_login_account: str = "10/minute"
    # Logins from a trusted device (see DEVICE_TOKEN_TTL) are counted per device instead of
    # per account, and its wrong passwords have their own budget: beyond it the device is
    # treated as untrusted (it meets the account's lock) until the window has passed.
    rate_limit_login_device: str = "10/minute"
    rate_limit_login_device_failures: str = "5/hour"
    rate_limit_refresh_session: str = "30/minute"
    rate_limit_refresh_ip: str = "300/minute"
    rate_limit_verify_ip: str = "3000/minute"
    # POST /auth/password per session, counted before the password is hashed.
    rate_limit_password_change: str = "5/minute"  # noqa: S105 - a rate, not a password
    # Password reset (docs/recovery.md): requests per client address and per email, and
    # confirmations per client address.
    rate_limit_password_reset_ip: str = "10/hour"  # noqa: S105 - a rate, not a password
    rate_limit_password_reset_account: str = "5/hour"  # noqa: S105
    rate_limit_password_reset_confirm_ip: str = "30/hour"  # noqa: S105
    # Verification links asked for per account (the Bearer route and refused logins alike).
    rate_limit_verify_email_account: str = "5/hour"
    # With REQUIRE_VERIFIED_EMAIL, registrations per email (each may email the address).
    rate_limit_register_account: str = "5/hour"
    # Second factors (docs/mfa.md): answers to two-step login challenges per account, and
    # step-ups (or any other factor check inside a session) per session. Wrong codes also count
    # toward the account's lockout.
    rate_limit_login_mfa_account: str = "10/minute"
    rate_limit_step_up_session: str = "10/minute"
    # Failed Basic authentications at /auth/introspect per client IP; beyond it the IP gets
    # 429 without its credentials being checked (a client secret is not a guessing target).
    rate_limit_introspect_failures: str = "10/minute"
    # POST /auth/token with grant_type=client_credentials: every request per client IP (before
    # the secret is checked), and the tokens issued to each client (a service should reuse its
    # token until near expiry, not fetch one per call).
    rate_limit_client_token_ip: str = "60/minute"  # noqa: S105 - a rate, not a token
    rate_limit_client_token_client: str = "30/minute"  # noqa: S105 - a rate, not a token
    # Account lockout: after LOCKOUT_THRESHOLD consecutive wrong passwords the account is
    # locked for LOCKOUT_BASE_SECONDS, doubling with each further failure up to
    # LOCKOUT_MAX_SECONDS. A success resets it.
    lockout_threshold: int = Field(default=5, ge=1)
    lockout_base_seconds: int = Field(default=30, ge=1)
    lockout_max_seconds: int = Field(default=300, ge=1)
    # Wrong current passwords at POST /auth/password that end the session making them: a
    # stolen session must not become a password-guessing tool.
    password_change_max_failures: int = Field(default=5, ge=1)
    # How long a device token (handed out at every successful login) keeps a client trusted:
    # such a client is exempt from the account's lockout, which an attacker can keep in force.
    device_token_ttl: int = Field(default=180 * 24 * 3600, ge=60)
    allow_registration: bool = False
    # The roles an account may have (a JSON list); access tokens carry the role, so services
    # behind the gateway may define their own (e.g. ["user", "admin", "editor"]). "user" (the
    # default, and what sign-up gives) and "admin" (may use /admin) are always among them.
    roles: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["user", "admin"])
    # Cookie logout also sends `Clear-Site-Data: "cookies"`: the browser then drops EVERY
    # cookie of the registrable domain and its subdomains (other applications' too). Off: only
    # our own cookies are expired.
    logout_clear_site_data: bool = False
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    # The request line and headers together, CRLFs included: beyond it `serve` answers 431
    # (app/core/http_protocol.py) before the head is buffered.
    max_request_header_bytes: int = Field(default=16 * 1024, ge=4096, le=1024 * 1024)
    db_pool_size: int = Field(default=10, ge=1)
    # Threads hashing passwords in each process. Unset: this process's share of the cores
    # (cores / WEB_CONCURRENCY, which `serve --workers N` sets), so hashes never outnumber cores.
    password_hash_threads: int | None = Field(default=None, ge=1, le=64)
    # argon2id costs of new hashes: `owasp` (the default) everywhere except test suites, whose
    # thousands of hashes `test` makes near free. Production refuses `test`.
    password_hash_profile: PasswordHashProfile = PasswordHashProfile.owasp
    db_pool_timeout: float = Field(default=5.0, gt=0)
    # Admission control (app/core/admission.py): requests worked on at once per process; beyond
    # it a request waits up to ADMISSION_MAX_WAIT_MS for a slot, then gets 503 overloaded.
    # Unset: 4 on SQLite (one writer), DB_POOL_SIZE + 4 on PostgreSQL.
    admission_max_in_flight: int | None = Field(default=None, ge=1)
    admission_max_wait_ms: int = Field(default=100, ge=0, le=60_000)
    prune_interval: int = Field(default=3600, ge=0)
    # /metrics requires `Authorization: Bearer <it>` when set (Prometheus: `authorization:
    # {credentials: ...}`). Unset: /metrics is open in development and test, absent (404) in
    # production.
    metrics_token: SecretStr | None = None
    # /docs, /redoc and /openapi.json. None: on in development and test, off in production.
    docs_enabled: bool | None = None
    log_level: str = "INFO"
    log_format: str | None = None  # "json" or "console"; default depends on environment

    @field_validator(
        "cors_origins",
        "trusted_proxies",
        "introspection_clients",
        "jwt_public_key_files",
        "roles",
        "backchannel_logout_clients",
        "dpop_algorithms",
        "dpop_origins",
        "webauthn_origins",
        mode="before",
    )
    @classmethod
    def _parse_json(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip():
            value = json.loads(value)
        return value

    @field_validator("database_url", "database_direct_url")
    @classmethod
    def _use_our_drivers(cls, value: str | None) -> str | None:
        """postgresql:// and postgres:// (as providers print them) mean asyncpg, sqlite:// means
        aiosqlite: the only drivers installed. Anything else is one clear line, not the
        traceback of a driver SQLAlchemy cannot import."""
        if value is None:
            return None
        scheme, separator, rest = value.partition("://")
        driver = _DATABASE_DRIVERS.get(scheme.lower())
        if not separator or driver is None:
            raise ValueError(
                "DATABASE_URL must start with postgresql://, postgres:// or "
                "postgresql+asyncpg:// (PostgreSQL), or sqlite+aiosqlite:/// or sqlite:/// "
                f"(SQLite); got {scheme[:40]!r}"
            )
        return f"{driver}://{rest}"

    @model_validator(mode="after")
    def _refuse_insecure_or_inconsistent(self) -> Self:
        problems = []
        if self.environment is Environment.production:
            secret = self.secret_key.get_secret_value()
            if secret == DEV_SECRET_KEY:
                problems.append(
                    "SECRET_KEY is the development default; set a random secret "
                    "(python -m app secret prints one)"
                )
            elif (bits := estimated_entropy_bits(secret)) < MIN_SECRET_BITS:
                problems.append(
                    f"SECRET_KEY looks weak (about {bits:.0f} bits of entropy, "
                    f"{MIN_SECRET_BITS} needed); set a random secret "
                    "(python -m app secret prints one)"
                )
            if not self.jwt_issuer:
                problems.append(
                    "JWT_ISSUER must be set in production (e.g. https://auth.example.com)"
                )
            elif not self.jwt_issuer.startswith("https://"):
                # Clients fetch the metadata and the signing keys from it: over http, anyone
                # on the path could hand them other keys.
                problems.append(
                    "JWT_ISSUER must be an https:// URL in production (clients fetch the "
                    "signing keys from it)"
                )
            if any(not origin.startswith("https://") for origin in self.webauthn_origins):
                # Browsers allow WebAuthn over http on localhost only: anywhere else such an
                # origin is a misconfiguration, or a page others can tamper with.
                problems.append("WEBAUTHN_ORIGINS must be https:// origins in production")
            if self.password_hash_profile is PasswordHashProfile.test:
                problems.append(
                    "PASSWORD_HASH_PROFILE=test (near-free argon2 costs) is for test suites "
                    "only; use owasp in production"
                )
        if len(self.secret_key.get_secret_value()) < 32:
            problems.append("SECRET_KEY must be at least 32 characters")
        if self.session_idle_timeout is not None and (
            self.session_idle_timeout > self.session_absolute_lifetime
        ):
            problems.append("SESSION_IDLE_TIMEOUT must not exceed SESSION_ABSOLUTE_LIFETIME")
        retention = self.refresh_token_retention
        if retention is not None and retention < max(self.refresh_reuse_interval, 1):
            problems.append(
                "REFRESH_TOKEN_RETENTION must be at least REFRESH_REUSE_INTERVAL (and above 0)"
            )
        for name, limit in self.rate_limits.items():
            if not _valid_limit(limit):
                problems.append(f"RATE_LIMIT_{name.upper()} must look like '20/minute'")
        if not {"user", "admin"} <= set(self.roles) or not all(
            _ROLE_NAME.fullmatch(role) for role in self.roles
        ):
            problems.append(
                'ROLES must include "user" and "admin", each a lower-case name of 1 to 32 '
                "letters, digits, - or _"
            )
        if "*" in self.cors_origins:
            problems.append("CORS_ORIGINS must list exact origins: '*' cannot carry credentials")
        problems.extend(self._backchannel_problems())
        if any(not _is_origin(origin) for origin in self.dpop_origins):
            problems.append("DPOP_ORIGINS must list origins like https://auth.example.com")
        if any(not _is_exact_origin(origin) for origin in self.webauthn_origins):
            # A browser's origin has no path, not even "/": such an entry would never match.
            problems.append("WEBAUTHN_ORIGINS must list origins like https://auth.example.com")
        if not self.dpop_algorithms or not set(self.dpop_algorithms) <= DPOP_ALGORITHMS:
            problems.append(
                "DPOP_ALGORITHMS must list some of "
                + ", ".join(sorted(DPOP_ALGORITHMS))
                + " (asymmetric algorithms only)"
            )
        if self.session_touch_interval >= self.idle_timeout:
            problems.append("SESSION_TOUCH_INTERVAL must be shorter than the idle timeout")
        problems.extend(self._pooler_problems())
        problems.extend(self._mail_problems())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _pooler_problems(self) -> list[str]:
        postgres = ("postgresql+asyncpg://",)
        problems = []
        if self.database_pooler is DatabasePooler.transaction and not self.database_url.startswith(
            postgres
        ):
            problems.append("DATABASE_POOLER=transaction needs a PostgreSQL DATABASE_URL")
        if self.database_direct_url is not None and not self.database_direct_url.startswith(
            postgres
        ):
            problems.append("DATABASE_DIRECT_URL must be a PostgreSQL URL")
        return problems

    def _mail_problems(self) -> list[str]:
        problems = []
        if self.smtp_url is not None:
            parts = urlsplit(self.smtp_url.get_secret_value())
            if parts.scheme not in SMTP_SCHEMES or not parts.hostname:
                problems.append(
                    "SMTP_URL must look like smtp://user:password@host:587 (or smtp+starttls://,"
                    " smtps://)"
                )
        if (
            "@" not in parseaddr(self.mail_from)[1]
            or "\n" in self.mail_from
            or "\r" in self.mail_from
        ):
            problems.append('MAIL_FROM must be an address, e.g. "authsvc <no-reply@example.com>"')
        for name, url in (
            ("PASSWORD_RESET_URL", self.password_reset_url),
            ("EMAIL_VERIFICATION_URL", self.email_verification_url),
        ):
            if url is not None and (
                "{token}" not in url or urlsplit(url).scheme not in ("https", "http")
            ):
                problems.append(
                    f"{name} must be an http(s):// URL with {{token}} in it, e.g. "
                    "https://app.example.com/page#token={token}"
                )
        if self.mail_templates_dir is not None and not self.mail_templates_dir.is_dir():
            problems.append(f"MAIL_TEMPLATES_DIR is not a folder: {self.mail_templates_dir}")
        return problems

    @property
    def transaction_pooled(self) -> bool:
        return self.database_pooler is DatabasePooler.transaction

    @property
    def direct_database_url(self) -> str | None:
        """PostgreSQL itself, for what a transaction-mode pooler cannot carry (LISTEN, and
        migrations' session-long work); None when only the pooler is known."""
        if self.database_direct_url is not None:
            return self.database_direct_url
        return None if self.transaction_pooled else self.database_url

    def _backchannel_problems(self) -> list[str]:
        problems = []
        ids = [client.client_id for client in self.backchannel_logout_clients]
        if len(ids) != len(set(ids)):
            problems.append("BACKCHANNEL_LOGOUT_CLIENTS must name each client_id once")
        schemes = ("https",) if self.environment is Environment.production else ("https", "http")
        for client in self.backchannel_logout_clients:
            parts = urlsplit(client.uri)
            if parts.scheme not in schemes or not parts.hostname or parts.fragment:
                problems.append(
                    f"BACKCHANNEL_LOGOUT_CLIENTS: the uri of {client.client_id!r} must be an "
                    + (
                        "https:// URL in production (the logout token is a bearer credential "
                        "of the session's end)"
                        if parts.scheme == "http"
                        else "absolute http(s):// URL without a fragment"
                    )
                )
        return problems

    @property
    def idle_timeout(self) -> int:
        if self.session_idle_timeout is not None:
            return self.session_idle_timeout
        return 2 * 3600 if self.environment is Environment.development else 24 * 3600

    @property
    def serves_docs(self) -> bool:
        if self.docs_enabled is not None:
            return self.docs_enabled
        return self.environment is not Environment.production

    @property
    def production_warnings(self) -> list[tuple[str, str]]:
        """Settings production accepts, as a deployment may mean them, but that are risky when
        they are a mistake: (variable, why), logged at start-up."""
        if self.environment is not Environment.production:
            return []
        warnings = []
        if not self.rate_limits_enabled:
            warnings.append(
                (
                    "RATE_LIMITS_ENABLED",
                    "false: logins, refreshes and registrations are not rate limited here; "
                    "only right behind a gateway that limits them",
                )
            )
        if self.metrics_token is None:
            warnings.append(
                ("METRICS_TOKEN", "unset: /metrics is not served (404); set it to scrape")
            )
        if self.smtp_url is None:
            warnings.append(
                (
                    "SMTP_URL",
                    f"unset: emails (password resets, verification links) are written to "
                    f"{self.mail_dir} instead of being sent",
                )
            )
        if self.transaction_pooled and self.database_direct_url is None:
            warnings.append(
                (
                    "DATABASE_DIRECT_URL",
                    "unset behind a transaction pooler: revocations reach the other replicas "
                    "only by SESSION_CACHE_TTL (LISTEN needs PostgreSQL itself)",
                )
            )
        return warnings

    @property
    def serves_metrics(self) -> bool:
        """Production serves /metrics only behind METRICS_TOKEN: it tells anyone how busy the
        service is, how many sessions are live and how logins fail."""
        return self.metrics_token is not None or self.environment is not Environment.production

    @property
    def rate_limits(self) -> dict[str, str]:
        return {
            "login_ip": self.rate_limit_login_ip,
            "login_account": self.rate_limit_login_account,
            "login_device": self.rate_limit_login_device,
            "login_device_failures": self.rate_limit_login_device_failures,
            "refresh_session": self.rate_limit_refresh_session,
            "refresh_ip": self.rate_limit_refresh_ip,
            "verify_ip": self.rate_limit_verify_ip,
            "introspect_failures": self.rate_limit_introspect_failures,
            "password_change": self.rate_limit_password_change,
            "password_reset_ip": self.rate_limit_password_reset_ip,
            "password_reset_account": self.rate_limit_password_reset_account,
            "password_reset_confirm_ip": self.rate_limit_password_reset_confirm_ip,
            "verify_email_account": self.rate_limit_verify_email_account,
            "register_account": self.rate_limit_register_account,
            "login_mfa_account": self.rate_limit_login_mfa_account,
            "step_up_session": self.rate_limit_step_up_session,
            "client_token_ip": self.rate_limit_client_token_ip,
            "client_token_client": self.rate_limit_client_token_client,
        }

    @property
    def publish_delay(self) -> int:
        if self.key_publish_delay is not None:
            return self.key_publish_delay
        return self.jwks_max_age + self.key_reload_interval

    @property
    def token_lifetime(self) -> timedelta:
        """How long a superseded key must keep verifying: a token it signed is accepted for
        TTL + leeway, and a replica may sign with it for up to one reload interval after its
        successor activated."""
        ttl = max(self.access_token_ttl, self.service_token_ttl)
        return timedelta(seconds=ttl + self.jwt_leeway + self.key_reload_interval)

    @property
    def issuer(self) -> str:
        return self.jwt_issuer or DEV_ISSUER

    @property
    def passkey_rp_id(self) -> str:
        return self.webauthn_rp_id or (urlsplit(self.issuer).hostname or "localhost")

    @property
    def passkey_origins(self) -> list[str]:
        if self.webauthn_origins:
            return self.webauthn_origins
        parts = urlsplit(self.issuer)
        return [f"{parts.scheme}://{parts.netloc}"]

    @property
    def proof_origins(self) -> list[str]:
        """The origins DPoP proofs to our own routes may name (empty: the request's Host)."""
        if self.dpop_origins:
            return self.dpop_origins
        if self.environment is Environment.production:
            parts = urlsplit(self.issuer)
            return [f"{parts.scheme}://{parts.netloc}"]
        return []

    @property
    def json_logs(self) -> bool:
        if self.log_format:
            return self.log_format == "json"
        return self.environment is not Environment.development


def _is_exact_origin(value: str) -> bool:
    parts = urlsplit(value)
    return _is_origin(value) and value == f"{parts.scheme}://{parts.netloc}"


def _is_origin(value: str) -> bool:
    parts = urlsplit(value)
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.path in ("", "/")
        and not (parts.query or parts.fragment or "@" in parts.netloc)
    )


def _valid_limit(value: str) -> bool:
    from limits import parse

    try:
        parse(value)
    except ValueError:
        return False
    return True


@lru_cache
def get_settings() -> Settings:
    return Settings()
