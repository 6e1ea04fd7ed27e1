"""The composition root: everything the service is made of, built once per process at
start-up, and handed to routes and middleware as components (app.core.components). Only the
application factory, the CLI and tests import this module."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from app.account.factors import AccountFactors
from app.account.service import AccountService, build_account_service
from app.auth.client_credentials import ClientCredentialsGrant
from app.auth.devices import DeviceTokenCodec
from app.auth.service import AuthService
from app.auth.tokens import AccessTokenCodec
from app.auth.transport import CsrfTokenCodec, Transports
from app.backchannel.service import BackchannelLogoutSender, LogoutTokenSigner
from app.clients.service import ServiceClients
from app.core.clock import Clock
from app.core.components import Components
from app.core.db import engine_for
from app.core.dependencies import Database
from app.core.ratelimit import RateLimiter
from app.core.security import PasswordHasher, TokenHasher
from app.core.settings import Settings
from app.dpop.nonce import NonceIssuer
from app.dpop.service import DPoP, ReplayCache
from app.gateway.service import IntrospectionService
from app.keys.service import KeyRing, KeySet, ensure_signing_key, load_file_key_ring, load_key_ring
from app.mail.rendering import MailTemplates
from app.mail.service import MailQueue, MailSender, Sealer
from app.mail.transport import FileTransport, MailTransport, SmtpTransport
from app.mfa.passkeys import Passkeys
from app.mfa.service import SecondFactors
from app.outbox.service import OutboxWorker, RetryPolicy, Sender
from app.recovery.registration import RegistrationProcessor, Registrations
from app.recovery.service import PasswordResets, ResetIssuer
from app.recovery.verification import EmailVerification, VerificationLinks
from app.sessions.cache import SessionStateCache
from app.sessions.factory import build_session_service
from app.sessions.policy import SessionPolicy
from app.sessions.service import SessionService
from app.sessions.store import SessionStore, open_store
from app.sessions.tokens import RefreshTokenCodec
from app.users.service import Lockout


@dataclass(slots=True)
class AppContext:
    """What this process is made of. Routes and middleware see it only as components."""

    settings: Settings
    engine: AsyncEngine
    clock: Clock
    passwords: PasswordHasher
    keys: KeySet
    access_codec: AccessTokenCodec
    refresh_codec: RefreshTokenCodec
    limiter: RateLimiter
    store: SessionStore
    session_cache: SessionStateCache
    sessions: SessionService
    auth: AuthService
    accounts: AccountService
    account_factors: AccountFactors
    backchannel: BackchannelLogoutSender
    mail: MailQueue
    resets: PasswordResets
    verification: EmailVerification
    registrations: Registrations
    factors: SecondFactors
    outbox: OutboxWorker
    dpop: DPoP

    @property
    def policy(self) -> SessionPolicy:
        return self.sessions.policy

    def components(self) -> Components:
        s = self.settings
        service_clients = ServiceClients(self.engine)
        return Components(
            s,
            self.clock,
            Database(self.engine),
            self.passwords,
            self.keys,
            self.access_codec,
            self.limiter,
            self.sessions,
            self.auth,
            self.accounts,
            self.account_factors,
            self.resets,
            self.verification,
            self.registrations,
            self.factors,
            Transports(
                CsrfTokenCodec(s.secret_key.get_secret_value()),
                allowed_origins=s.cors_origins,
                device_max_age=s.device_token_ttl,
                clear_site_data=s.logout_clear_site_data,
            ),
            IntrospectionService(
                clients=s.introspection_clients,
                limiter=self.limiter,
                access=self.access_codec,
                sessions=self.sessions,
                clock=self.clock,
                issuer=s.issuer,
                audience=s.jwt_audience,
                service_clients=service_clients,
            ),
            service_clients,
            ClientCredentialsGrant(
                clients=service_clients,
                access=self.access_codec,
                limiter=self.limiter,
                clock=self.clock,
            ),
            self.dpop,
        )


async def build_context(
    settings: Settings,
    clock: Clock,
    engine: AsyncEngine | None = None,
    *,
    passwords: PasswordHasher | None = None,
) -> AppContext:
    """`engine` and `passwords` are the seams tests use (a shared engine, a gated hasher)."""
    engine = engine or engine_for(
        settings,
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout,
        serving_requests=True,
    )
    secret = settings.secret_key.get_secret_value()
    if settings.jwt_private_key_file is None:
        algorithm = settings.jwt_algorithm.value
        await ensure_signing_key(engine, algorithm=algorithm, secret=secret, now=clock.now())
    keys = KeySet(await _key_ring(settings, engine, clock))
    access_codec = AccessTokenCodec(
        keys,
        issuer=settings.issuer,
        audience=settings.jwt_audience,
        ttl=settings.access_token_ttl,
        leeway=settings.jwt_leeway,
        client_id=settings.jwt_client_id,
        service_ttl=settings.service_token_ttl,
        step_up_ttl=timedelta(seconds=settings.step_up_ttl),
    )
    passwords = passwords or PasswordHasher(
        settings.password_hash_threads, settings.password_hash_profile
    )
    limiter = RateLimiter(
        settings.rate_limits,
        redis_url=settings.redis_url,
        enabled=settings.rate_limits_enabled,
        namespace=settings.rate_limit_namespace,
        redis_timeout=settings.redis_timeout,
        redis_retry_interval=settings.redis_retry_interval,
    )
    store = open_store(engine)
    cache = SessionStateCache(settings.session_cache_ttl)
    backchannel = build_backchannel_sender(settings, keys)
    mail, mail_sender = build_mail(settings)
    reset_hasher = TokenHasher(secret, "password_reset")
    issuer = ResetIssuer(
        engine,
        mail,
        reset_hasher,
        ttl=settings.password_reset_ttl,
        reset_url=settings.password_reset_url,
    )
    links = VerificationLinks(
        hasher=TokenHasher(secret, "verify_email"),
        mail=mail,
        ttl=settings.email_verification_ttl,
        url=settings.email_verification_url,
    )
    sealer = Sealer(secret)
    registration_hasher = TokenHasher(secret, "register")
    registration = RegistrationProcessor(engine, links, registration_hasher, mail)
    outbox = build_outbox_worker(
        settings, engine, clock, [backchannel, mail_sender, issuer, registration]
    )
    factors = build_factors(settings, mail)
    sessions = build_session_service(
        settings, store, cache=cache, limiter=limiter, clock=clock, on_logout_enqueued=outbox.wake
    )
    accounts = build_account_service(settings, passwords=passwords, sessions=sessions, clock=clock)
    verification = EmailVerification(
        links=links, limiter=limiter, clock=clock, on_enqueued=outbox.wake
    )
    return AppContext(
        settings=settings,
        engine=engine,
        clock=clock,
        passwords=passwords,
        keys=keys,
        access_codec=access_codec,
        refresh_codec=RefreshTokenCodec(secret),
        limiter=limiter,
        store=store,
        session_cache=cache,
        sessions=sessions,
        auth=AuthService(
            sessions=sessions,
            passwords=passwords,
            access=access_codec,
            clock=clock,
            lockout=Lockout.of(settings),
            devices=DeviceTokenCodec(secret, ttl=settings.device_token_ttl),
            limiter=limiter,
            factors=factors,
            unverified=verification if settings.require_verified_email else None,
        ),
        accounts=accounts,
        account_factors=AccountFactors(
            factors=factors,
            sessions=sessions,
            passwords=passwords,
            access=access_codec,
            limiter=limiter,
            lockout=Lockout.of(settings),
            clock=clock,
            step_up_ttl=timedelta(seconds=settings.step_up_ttl),
        ),
        resets=PasswordResets(
            engine,
            hasher=reset_hasher,
            passwords=passwords,
            accounts=accounts,
            clock=clock,
            max_attempts=settings.password_reset_max_attempts,
            on_enqueued=outbox.wake,
        ),
        verification=verification,
        registrations=Registrations(
            engine,
            accounts=accounts,
            links=links,
            hasher=registration_hasher,
            passwords=passwords,
            sealer=sealer,
            clock=clock,
            on_enqueued=outbox.wake,
        ),
        backchannel=backchannel,
        mail=mail,
        factors=factors,
        outbox=outbox,
        dpop=build_dpop(settings, engine, clock),
    )


def build_dpop(settings: Settings, engine: AsyncEngine, clock: Clock) -> DPoP:
    """The replay cache is shared by every replica: Redis when configured (its calls bounded
    by REDIS_TIMEOUT, as the rate limiter's), else the database."""
    redis = None
    if settings.redis_url:
        redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
        )
    replay = ReplayCache(
        engine,
        window=settings.dpop_iat_window,
        redis=redis,
        redis_timeout=settings.redis_timeout,
        redis_retry_interval=settings.redis_retry_interval,
        namespace=settings.rate_limit_namespace,
    )
    return DPoP(
        replay,
        NonceIssuer(settings.secret_key.get_secret_value().encode()),
        clock,
        algorithms=frozenset(settings.dpop_algorithms),
        window=settings.dpop_iat_window,
        required=settings.dpop_required,
        nonce_required=settings.dpop_nonce_required,
        origins=settings.proof_origins,
    )


def build_backchannel_sender(settings: Settings, keys: KeySet) -> BackchannelLogoutSender:
    return BackchannelLogoutSender(
        LogoutTokenSigner(keys, issuer=settings.issuer),
        {client.client_id: client.uri for client in settings.backchannel_logout_clients},
        timeout=settings.backchannel_logout_timeout,
        give_up_after=settings.backchannel_logout_give_up_after,
    )


def build_factors(settings: Settings, mail: MailQueue | None) -> SecondFactors:
    """Second factors and passkeys as the settings describe them (docs/mfa.md)."""
    secret = settings.secret_key.get_secret_value()
    ttl = timedelta(seconds=settings.mfa_challenge_ttl)
    return SecondFactors(
        secret_key=secret,
        issuer=settings.mfa_issuer,
        mail=mail,
        challenge_ttl=ttl,
        max_challenge_attempts=settings.mfa_challenge_max_attempts,
        lockout=Lockout(
            threshold=settings.mfa_lockout_threshold,
            base_seconds=settings.mfa_lockout_base_seconds,
            max_seconds=settings.mfa_lockout_max_seconds,
        ),
        passkeys=Passkeys(
            secret_key=secret,
            rp_id=settings.passkey_rp_id,
            rp_name=settings.mfa_issuer,
            origins=settings.passkey_origins,
            ceremony_ttl=ttl,
        ),
    )


def build_mail(settings: Settings) -> tuple[MailQueue, MailSender]:
    """What requests write email with, and the outbox sender that delivers it: over SMTP, or
    into MAIL_DIR when SMTP_URL is unset."""
    sealer = Sealer(settings.secret_key.get_secret_value())
    transport: MailTransport = (
        SmtpTransport(settings.smtp_url.get_secret_value(), timeout=settings.smtp_timeout)
        if settings.smtp_url
        else FileTransport(settings.mail_dir)
    )
    sender = MailSender(
        transport,
        MailTemplates(settings.mail_templates_dir),
        sealer,
        sender_address=settings.mail_from,
        base_context={"service_name": settings.mail_service_name, "issuer": settings.issuer},
        give_up_after=settings.mail_give_up_after,
    )
    return MailQueue(sealer, sender_address=settings.mail_from), sender


def build_outbox_worker(
    settings: Settings, engine: AsyncEngine, clock: Clock, senders: list[Sender]
) -> OutboxWorker:
    return OutboxWorker(
        engine,
        senders,
        clock=clock,
        poll_interval=settings.outbox_poll_interval,
        retry=RetryPolicy(base=settings.outbox_retry_base, cap=settings.outbox_retry_max),
        # Longer than any attempt (each is bounded by its timeout): a worker's claim is not
        # taken over while it is still waiting for the receiver or the mail server.
        lease=2 * max(settings.backchannel_logout_timeout, settings.smtp_timeout) + 5,
    )


async def _key_ring(settings: Settings, engine: AsyncEngine, clock: Clock) -> KeyRing:
    if settings.jwt_private_key_file is not None:
        return await asyncio.to_thread(
            load_file_key_ring, settings.jwt_private_key_file, settings.jwt_public_key_files
        )
    return await load_key_ring(
        engine,
        secret=settings.secret_key.get_secret_value(),
        now=clock.now(),
        token_lifetime=settings.token_lifetime,
    )


async def reload_keys(ctx: AppContext) -> None:
    """Pick up rotated keys: publish new ones, sign with the newly active one, drop retired."""
    ctx.keys.use(await _key_ring(ctx.settings, ctx.engine, ctx.clock))
