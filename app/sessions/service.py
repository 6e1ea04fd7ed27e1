"""The session rules at work: authenticate a request's session, slide it, start, rotate,
revoke and list sessions. No HTTP here; the database side is the store (and, inside a
request's unit of work, the repository)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from app.audit.service import announce, record
from app.core.client import ClientInfo
from app.core.clock import Clock
from app.core.db import UnitOfWork
from app.core.errors import UnauthorizedError
from app.core.ratelimit import RateLimiter
from app.dpop.errors import InvalidDPoPProof
from app.sessions import repository
from app.sessions.cache import SessionStateCache
from app.sessions.errors import (
    RefreshTokenInvalid,
    RefreshTokenReused,
    RefreshTokenSuperseded,
    SessionExpired,
    SessionNotFound,
    SessionRevoked,
)
from app.sessions.policy import AuthContext, SessionPolicy, SessionState, TokenLink, Unusable
from app.sessions.store import Rotation, RotationRequest, SessionStart, SessionStore
from app.sessions.tokens import RefreshTokenCodec
from app.users.repository import UserRecord

logger = logging.getLogger("app.sessions")
# The names these events have always been logged under (log pipelines filter on them).
_prune_logger = logging.getLogger("app.sessions.prune")
_limit_logger = logging.getLogger("app.auth")

# Called with the session a presented refresh token names, before anything changes: the
# cookie transport's CSRF check lives behind it (this module never sees cookies or CSRF).
SessionGuard = Callable[[uuid.UUID], None]


@dataclass(frozen=True, slots=True)
class IssuedSession:
    """A session as a client may use it now: its state and its current refresh token, as of
    `now` (the instant its rows were written)."""

    session: SessionState
    refresh_token: str
    now: datetime


class SessionService:
    def __init__(
        self,
        store: SessionStore,
        *,
        policy: SessionPolicy,
        cache: SessionStateCache,
        codec: RefreshTokenCodec,
        limiter: RateLimiter,
        clock: Clock,
        logout_clients: tuple[str, ...] = (),
        on_logout_enqueued: Callable[[], None] | None = None,
    ) -> None:
        """`logout_clients`: the back-channel logout clients every end of a session is told
        to (through the outbox, in the revoking transaction); `on_logout_enqueued`: called
        once such a transaction has committed (it wakes this process's outbox worker)."""
        self._store = store
        self._logout_clients = logout_clients
        self._on_logout_enqueued = on_logout_enqueued
        self.policy = policy
        self._cache = cache
        self._codec = codec
        self._limiter = limiter
        self._clock = clock

    # --- per request -------------------------------------------------------------------

    async def authenticate(self, session_id: uuid.UUID, now: datetime) -> SessionState:
        """The session named by an access token, if it may still be used: one indexed read,
        or none while a recent read (see SessionStateCache) says it is usable."""
        cached = self._cache.get(session_id)
        if cached is not None and cached.is_usable_at(now):
            return cached
        epoch = self._cache.epoch
        state = self.require_usable(await self._store.load(session_id), now)
        self._cache.put(state, read_at=epoch)
        return state

    def require_usable(self, state: SessionState | None, now: datetime) -> SessionState:
        if state is None:
            raise SessionRevoked()
        reason = state.check(now)
        if reason is None:
            return state
        raise _refusal(state, reason)

    async def touch(self, state: SessionState, now: datetime) -> bool:
        """Slide the idle deadline after activity; returns whether the database was written.

        Coalesced: the write happens only when the stored deadline lags the ideal one by at
        least the touch interval, so a busy session costs one UPDATE per interval and the
        stored deadline is never more than one interval behind the truth. The UPDATE repeats
        that condition, so concurrent requests (or replicas) do not each write the same row.
        """
        target = self.policy.slid_deadline(state, now)
        lag_limit = target - self.policy.touch_interval
        if state.idle_expires_at > lag_limit or target <= state.idle_expires_at:
            return False
        epoch = self._cache.epoch
        written = await self._store.slide(
            state.id, now=now, idle_expires_at=target, only_if_before=lag_limit
        )
        if written:
            # The row was live when written (the UPDATE requires it), and any revocation
            # committed since has moved the epoch: caching the slid state is safe. Unwritten
            # (revoked meanwhile, or another request slid it), the next request reads it.
            self._cache.put(replace(state, idle_expires_at=target), read_at=epoch)
        return written

    # --- starting ------------------------------------------------------------------------

    async def find_login_candidate(self, email: str) -> UserRecord | None:
        """The account a login names, read before its password check (no transaction)."""
        return await self._store.find_login_candidate(email)

    async def find_account(self, user_id: uuid.UUID) -> UserRecord | None:
        """The account, read outside any transaction (before a password check)."""
        return await self._store.find_account(user_id)

    async def start(
        self,
        user: UserRecord,
        client: ClientInfo,
        device_name: str | None,
        now: datetime,
        dpop_jkt: str | None = None,
    ) -> IssuedSession | None:
        """Start a session for a user whose password just matched, in one transaction of the
        store, if the user is still as `user` says; None (nothing written) otherwise.
        `dpop_jkt`: the DPoP key to bind the session to (RFC 9449), if the login proved one."""
        session_id = uuid.uuid4()
        idle, absolute = self.policy.new_deadlines(now)
        refresh_token = self._codec.new_token(session_id)
        started = await self._store.start(
            SessionStart(
                user_id=user.id,
                password_hash=user.password_hash,
                session_id=session_id,
                token_id=uuid.uuid4(),
                token_hash=self._codec.hash(refresh_token),
                now=now,
                idle_expires_at=idle,
                absolute_expires_at=absolute,
                device_name=device_name,
                user_agent=client.stored_user_agent,
                ip=client.ip,
                dpop_jkt=dpop_jkt,
            )
        )
        if started is None:
            return None
        announce("login.succeeded", client=client, user_id=user.id, session_id=session_id)
        state = _new_state(session_id, user.id, started.email, started.role, now, idle, absolute)
        return IssuedSession(state, refresh_token, now)

    async def start_in(
        self,
        uow: UnitOfWork,
        user: UserRecord,
        client: ClientInfo,
        device_name: str | None,
        now: datetime,
        dpop_jkt: str | None = None,
        context: AuthContext | None = None,
    ) -> IssuedSession:
        """Start a session inside the request's unit of work (the user row is locked there),
        bound to the DPoP key `dpop_jkt` if given, recording `context` (how the user proved
        who they are; None: a password)."""
        conn = await uow.connection()
        session_id = uuid.uuid4()
        idle, absolute = self.policy.new_deadlines(now)
        await repository.insert_session(
            conn,
            session_id=session_id,
            user_id=user.id,
            device_name=device_name,
            user_agent=client.stored_user_agent,
            ip=client.ip,
            now=now,
            idle_expires_at=idle,
            absolute_expires_at=absolute,
            dpop_jkt=dpop_jkt,
            context=context,
        )
        refresh_token = self._codec.new_token(session_id)
        await repository.insert_refresh_token(
            conn,
            session_id=session_id,
            token_hash=self._codec.hash(refresh_token),
            parent_id=None,
            generation=1,
            now=now,
        )
        details = {"amr": context.amr} if context else {}
        await record(
            conn,
            "login.succeeded",
            now=now,
            client=client,
            user_id=user.id,
            session_id=session_id,
            **details,
        )
        state = _new_state(session_id, user.id, user.email, user.role, now, idle, absolute)
        if context is not None:
            state = replace(
                state, amr=context.amr, auth_time=context.auth_time, factor_at=context.factor_at
            )
        return IssuedSession(state, refresh_token, now)

    # --- rotation ------------------------------------------------------------------------

    async def rotate(
        self,
        refresh_token: str,
        client: ClientInfo,
        guard: SessionGuard | None = None,
        dpop_jkt: str | None = None,
    ) -> IssuedSession:
        """Rotate a refresh token: its successor, or the same successor again for a retry
        inside the reuse interval. An older token inside the interval is refused as
        superseded (a delayed duplicate); a replay outside it revokes the session (theft).

        One store call (one round trip on PostgreSQL); the guard runs first. The per-session
        limit counts rotations only: the store is told whether it has room and refuses a new
        rotation without it, while a retry (whose rotation was counted) is answered anyway.
        `dpop_jkt`: the key of the DPoP proof sent with the refresh, if any; a session bound to
        a key rotates only with its proof (InvalidDPoPProof otherwise, nothing changed)."""
        codec = self._codec
        session_id = codec.session_of(refresh_token) or await self._legacy_session_of(refresh_token)
        if session_id is None:
            raise RefreshTokenInvalid()
        if guard is not None:
            guard(session_id)
        may_rotate = await self._limiter.allows("refresh_session", str(session_id))
        now = self._clock.now()
        successor = codec.successor(refresh_token, session_id)
        result = await self._store.rotate(
            RotationRequest(
                session_id=session_id,
                token_hash=codec.hash(refresh_token),
                successor_id=uuid.uuid4(),
                successor_hash=codec.hash(successor),
                now=now,
                policy=self.policy,
                ip=client.ip,
                user_agent=client.stored_user_agent,
                arrived_at=self.policy.credited_arrival(client.arrived_at, now),
                may_rotate=may_rotate,
                logout_clients=self._logout_clients,
                dpop_jkt=dpop_jkt,
            )
        )
        state = await self._after_rotation(result, client, now)
        return IssuedSession(state, successor, now)

    async def _after_rotation(
        self, result: Rotation, client: ClientInfo, now: datetime
    ) -> SessionState:
        state = result.session
        if result.outcome == "dpop_mismatch":
            raise InvalidDPoPProof("The session is bound to a DPoP key: send a proof signed by it.")
        if result.outcome == "invalid" or state is None:
            raise RefreshTokenInvalid()
        if result.outcome == "unusable":
            self.require_usable(state, now)
            raise SessionRevoked()  # pragma: no cover - require_usable raised already
        if result.outcome == "limited":
            await self._limiter.refuse("refresh_session", str(state.id))
        if result.outcome == "superseded":
            _announce(
                "refresh.superseded",
                state,
                client,
                reuse_class=result.reuse_class,
                generation=result.generation,
            )
            raise RefreshTokenSuperseded()
        if result.outcome == "reused":
            self._cache.clear()  # the revocation is committed already
            self._logouts_committed()
            _announce(
                "refresh.reuse_detected",
                state,
                client,
                reuse_class=result.reuse_class,
                generation=result.generation,
            )
            raise RefreshTokenReused()
        if result.outcome == "rotated":
            await self._count_rotation(state.id)
            _announce("refresh.rotated", state, client, generation=result.generation)
        else:  # a retry: its rotation was counted when it happened
            _announce("refresh.retried", state, client, reuse_class=result.reuse_class)
        return state

    async def _count_rotation(self, session_id: uuid.UUID) -> None:
        # The rotation is committed: a limiter outage (Redis) must not turn it into an error.
        try:
            await self._limiter.count("refresh_session", str(session_id))
        except Exception as exc:
            _limit_logger.warning(
                "ratelimit.count_failed", extra={"error_type": type(exc).__name__}
            )

    async def _legacy_session_of(self, refresh_token: str) -> uuid.UUID | None:
        """The session of a token issued before tokens named their session: one extra read."""
        return await self._store.session_of_token(self._codec.hash(refresh_token))

    async def load(self, session_id: uuid.UUID) -> SessionState | None:
        """The stored session, uncached (for introspection; nothing changes)."""
        return await self._store.load(session_id)

    async def bound_key(self, session_id: uuid.UUID) -> str | None:
        """The DPoP key the session is bound to (for introspection of its refresh tokens)."""
        return await self._store.bound_key(session_id)

    async def describe_refresh_token(self, refresh_token: str) -> TokenLink | None:
        """The stored link of a refresh token, for introspection (nothing changes)."""
        return await self._store.find_token_link(self._codec.hash(refresh_token))

    async def record_factor(
        self, uow: UnitOfWork, state: SessionState, methods: list[str], now: datetime
    ) -> SessionState:
        """A second factor proved inside the live session `state` (a step-up): the session
        records its methods (added to those it had) and when. This process drops the cached row
        once it commits; another replica's cached row keeps the older factor time for at most
        SESSION_CACHE_TTL, which can only refuse a step-up-only request, never allow one."""
        amr = " ".join(dict.fromkeys([*state.methods, *methods]))
        written = await repository.record_factor(await uow.connection(), state.id, amr=amr, now=now)
        if not written:
            raise SessionRevoked()
        uow.after_commit(lambda: self._cache.discard([state.id]))
        return replace(state, amr=amr, factor_at=now)

    # --- ending --------------------------------------------------------------------------

    async def revoke(
        self,
        uow: UnitOfWork,
        *,
        now: datetime,
        reason: str,
        session_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        except_session: uuid.UUID | None = None,
    ) -> list[uuid.UUID]:
        """Revoke one session, or a user's live sessions (optionally but one), in the unit of
        work; once it commits, this process stops trusting cached session rows (a clear
        before the commit would let a concurrent request re-cache the old state)."""
        revoked = await repository.revoke_sessions(
            await uow.connection(),
            now=now,
            reason=reason,
            session_id=session_id,
            user_id=user_id,
            except_session=except_session,
            logout_clients=self._logout_clients,
        )
        uow.after_commit(self._cache.clear)
        if revoked:
            uow.after_commit(self._logouts_committed)
        return revoked

    def _logouts_committed(self) -> None:
        if self._logout_clients and self._on_logout_enqueued is not None:
            self._on_logout_enqueued()

    async def revoke_own(
        self, uow: UnitOfWork, user_id: uuid.UUID, session_id: uuid.UUID, *, now: datetime
    ) -> None:
        """Revoke one of the user's own sessions; anyone else's is reported as not found."""
        state = await repository.get_session_state(await uow.connection(), session_id)
        if state is None or state.user_id != user_id or state.revoked_at is not None:
            raise SessionNotFound()
        await self.revoke(uow, now=now, reason="revoked_by_user", session_id=session_id)

    async def lock_live(self, uow: UnitOfWork, session_id: uuid.UUID) -> bool:
        """Lock the session's row in the unit of work; whether it is still unrevoked (the
        caller's change is then ordered against any revocation of it)."""
        conn = await uow.connection()
        if not await repository.lock_session(conn, session_id):
            return False
        state = await repository.get_session_state(conn, session_id)
        return state is not None and state.revoked_at is None

    async def session_of_refresh_token(
        self,
        uow: UnitOfWork,
        refresh_token: str,
        guard: SessionGuard,
        dpop_jkt: str | None = None,
    ) -> SessionState:
        """The session a refresh token belongs to, locked in the unit of work (so that a
        logout is ordered after any refresh of it in flight), once `guard` accepted it and,
        for a session bound to a DPoP key, the request proved that key (`dpop_jkt`)."""
        conn = await uow.connection()
        token_hash = self._codec.hash(refresh_token)
        # The same lock order as every other writer of a session: the session row first.
        if not await repository.lock_session_of_token(conn, token_hash):
            raise RefreshTokenInvalid()
        link = await repository.find_token_link(conn, token_hash)
        if link is None:  # pragma: no cover - pruned between the two statements
            raise RefreshTokenInvalid()
        guard(link.session.id)
        _, bound_to = await repository.lock_session_binding(conn, link.session.id)
        if bound_to is not None and bound_to != dpop_jkt:
            raise InvalidDPoPProof("The session is bound to a DPoP key: send a proof signed by it.")
        return link.session

    # --- inspection and upkeep -----------------------------------------------------------

    async def list_devices(
        self, uow: UnitOfWork, user_id: uuid.UUID
    ) -> list[repository.DeviceSession]:
        return await repository.list_live_sessions(
            await uow.connection(), user_id, now=self._clock.now()
        )

    async def count_live(self) -> int:
        return await self._store.count_live(self._clock.now())

    async def prune(self, retention: int | None) -> tuple[int, int]:
        """Delete dead sessions and, with `retention` (seconds), tokens used before then."""
        now = self._clock.now()
        used_before = None if retention is None else now - timedelta(seconds=retention)
        sessions, tokens = await self._store.prune(now, used_before)
        _prune_logger.info(
            "prune.completed", extra={"sessions_deleted": sessions, "tokens_deleted": tokens}
        )
        return sessions, tokens


def _announce(event: str, state: SessionState, client: ClientInfo, **details: object) -> None:
    announce(event, client=client, user_id=state.user_id, session_id=state.id, **details)


def _refusal(state: SessionState, reason: Unusable) -> UnauthorizedError:
    if not reason.is_expiry:
        return SessionRevoked()
    logger.info(
        "session.expired",
        extra={
            "session_id": str(state.id),
            "user_id": str(state.user_id),
            "deadline": "absolute" if reason is Unusable.absolute_deadline else "idle",
        },
    )
    return SessionExpired()


def _new_state(
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    email: str,
    role: str,
    now: datetime,
    idle_expires_at: datetime,
    absolute_expires_at: datetime,
) -> SessionState:
    return SessionState(
        id=session_id,
        user_id=user_id,
        email=email,
        role=role,
        user_active=True,
        created_at=now,
        idle_expires_at=idle_expires_at,
        absolute_expires_at=absolute_expires_at,
        revoked_at=None,
    )
