"""Every session rule, through both session stores: one table of rule cases, each case's outcome
stated once and checked on every store variant (docs/refresh-rotation.md, app/sessions/store/).

- portable store (SQLAlchemy Core) on SQLite,
- portable store on PostgreSQL,
- PostgreSQL store (the PL/pgSQL functions installed by the migrations) on PostgreSQL,
- the same, each rotation sent in one batch with a neighbour session's rotation, so that every
  rule holds through `authsvc_rotate_refresh_many` too.

No app and no HTTP: the data is seeded with the repositories, the store is called directly, and
the rows it leaves (session, tokens, user, audit) are compared with what the rule says. Time is a
fixed `now` with explicit deadlines around it, so nothing depends on the wall clock.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.audit.models import AuditEvent
from app.core.db import create_engine, table_of
from app.sessions import repository as sessions
from app.sessions.models import RefreshToken, Session
from app.sessions.policy import SessionPolicy, SessionState, Unusable
from app.sessions.store.base import (
    Outcome,
    Rotation,
    RotationRequest,
    SessionStart,
    SessionStore,
    StartedFor,
)
from app.sessions.store.portable import PortableSessionStore
from app.sessions.store.postgres import PostgresSessionStore
from app.users import repository as users

# Each test runs on every store variant. The parameter named "database" makes the PostgreSQL
# variants count as PostgreSQL tests (conftest: REQUIRE_POSTGRES=1 turns their skip into a failure).
pytestmark = pytest.mark.parametrize(
    ("kind", "database"),
    [
        ("portable", "sqlite"),
        ("portable", "postgres"),
        ("postgres", "postgres"),
        ("batched", "postgres"),
    ],
    ids=["portable-sqlite", "portable-postgres", "postgres-postgres", "batched-postgres"],
    scope="module",
)

_sessions = table_of(Session)
_tokens = table_of(RefreshToken)
_audit = table_of(AuditEvent)

SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
# As tests/conftest.py make_settings configures the app.
POLICY = SessionPolicy(
    idle_timeout=HOUR,
    absolute_lifetime=8 * HOUR,
    touch_interval=5 * SECOND,
    reuse_interval=30 * SECOND,
)
IP = "203.0.113.9"
USER_AGENT = "store-rules/1.0"
PASSWORD_HASH = "$dummy$not-a-real-hash"  # never verified here: the stores only compare it


@pytest.fixture(scope="module")
def url(database: str, request: pytest.FixtureRequest) -> str:
    value: str = request.getfixturevalue(f"{database}_url")
    return value


@dataclass(frozen=True)
class Env:
    engine: AsyncEngine
    store: SessionStore


@pytest.fixture(scope="module")
async def env(kind: str, url: str) -> AsyncIterator[Env]:
    engine = create_engine(url)
    stores = {"portable": PortableSessionStore, "postgres": PostgresSessionStore}
    store = stores.get(kind, BatchedStore)(engine)
    try:
        yield Env(engine, store)
    finally:
        await engine.dispose()


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _email() -> str:
    return f"rules-{uuid.uuid4().hex[:12]}@example.com"


# --- what the stores leave behind ---------------------------------------------------------------


Rows = dict[str, Any]


async def _session_row(engine: AsyncEngine, session_id: uuid.UUID) -> Rows | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(_sessions).where(_sessions.c.id == session_id))).first()
    return dict(row._mapping) if row else None


async def _token_rows(engine: AsyncEngine, session_id: uuid.UUID) -> dict[uuid.UUID, Rows]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(_tokens).where(_tokens.c.session_id == session_id))
    return {row.id: dict(row._mapping) for row in rows}


async def _audit_rows(engine: AsyncEngine, session_id: uuid.UUID) -> list[tuple[Any, ...]]:
    t = _audit
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(t.c.event, t.c.user_id, t.c.ip, t.c.user_agent, t.c.details, t.c.created_at)
            .where(t.c.session_id == session_id)
            .order_by(t.c.id)
        )
    return [tuple(row) for row in rows]


# --- rotation ---------------------------------------------------------------------------------

Presented = int | Literal["unknown_token", "other_session", "unknown_session"]


@dataclass(frozen=True, kw_only=True)
class RotationCase:
    """A session as seeded, the token presented at `now`, and what every store must answer."""

    name: str
    # The seeded session: its chain of tokens, generation 1 first, each used that long before
    # `now` (None: unused), and its deadlines relative to `now`.
    used: tuple[timedelta | None, ...] = (None,)
    idle_in: timedelta = 10 * MINUTE
    absolute_in: timedelta = 8 * HOUR
    revoked: bool = False
    user_active: bool = True
    # A generation of the chain, or a token the rule must not accept for this session.
    present: Presented = 1
    # How long before `now` the request arrived (the reuse interval is measured from then),
    # and whether the session's refresh limit has room for a rotation.
    waited: timedelta = timedelta(0)
    may_rotate: bool = True
    # Expected, the same on every store.
    outcome: Outcome
    generation: int | None = None
    reuse_class: str | None = None
    why: Unusable | None = None  # SessionState.check(now) before the rotation
    slid_to: timedelta | None = None  # the returned idle deadline; None: as it was
    slide_written: bool = True  # whether that slide is stored (it lags by > touch interval)


ROTATION_CASES = [
    # A fresh token rotates; the idle deadline slides to now + idle timeout.
    RotationCase(name="rotated", outcome="rotated", generation=2, slid_to=HOUR),
    RotationCase(
        name="rotated_second_generation",
        used=(40 * SECOND, None),
        present=2,
        outcome="rotated",
        generation=3,
        slid_to=HOUR,
    ),
    # The slide is capped at the absolute deadline, which never moves.
    RotationCase(
        name="rotated_slide_capped_at_absolute",
        absolute_in=30 * MINUTE,
        outcome="rotated",
        generation=2,
        slid_to=30 * MINUTE,
    ),
    # Lagging by less than (or exactly) the touch interval: answered slid, not written.
    RotationCase(
        name="rotated_lag_inside_touch_interval",
        idle_in=HOUR - 3 * SECOND,
        outcome="rotated",
        generation=2,
        slid_to=HOUR,
        slide_written=False,
    ),
    RotationCase(
        name="rotated_lag_equal_to_touch_interval",
        idle_in=HOUR - 5 * SECOND,
        outcome="rotated",
        generation=2,
        slid_to=HOUR,
        slide_written=False,
    ),
    RotationCase(
        name="rotated_lag_just_over_touch_interval",
        idle_in=HOUR - 6 * SECOND,
        outcome="rotated",
        generation=2,
        slid_to=HOUR,
    ),
    # A stored idle deadline beyond now + idle timeout never moves back.
    RotationCase(name="rotated_idle_ahead", idle_in=2 * HOUR, outcome="rotated", generation=2),
    RotationCase(
        name="rotated_one_second_before_idle_deadline",
        idle_in=SECOND,
        outcome="rotated",
        generation=2,
        slid_to=HOUR,
    ),
    # The newest token's parent again, inside the reuse interval: a retry, nothing revoked.
    RotationCase(
        name="retried",
        used=(10 * SECOND, None),
        outcome="retried",
        generation=1,
        reuse_class="retry_inside_interval",
        slid_to=HOUR,
    ),
    RotationCase(
        name="retried_at_reuse_interval",
        used=(30 * SECOND, None),
        idle_in=HOUR - 3 * SECOND,
        outcome="retried",
        generation=1,
        reuse_class="retry_inside_interval",
        slid_to=HOUR,
        slide_written=False,
    ),
    RotationCase(
        name="retried_second_generation",
        used=(50 * SECOND, 20 * SECOND, None),
        present=2,
        outcome="retried",
        generation=2,
        reuse_class="retry_inside_interval",
        slid_to=HOUR,
    ),
    # The interval is measured from when the request arrived, not when it is handled.
    RotationCase(
        name="retried_measured_from_arrival",
        used=(40 * SECOND, None),
        waited=15 * SECOND,
        outcome="retried",
        generation=1,
        reuse_class="retry_inside_interval",
        slid_to=HOUR,
    ),
    RotationCase(
        name="retried_arrived_before_first_use",
        used=(5 * SECOND, None),
        waited=10 * SECOND,
        outcome="retried",
        generation=1,
        reuse_class="retry_inside_interval",
        slid_to=HOUR,
    ),
    # ... after the interval: a stale replay, the session is revoked.
    RotationCase(
        name="stale_replay",
        used=(31 * SECOND, None),
        outcome="reused",
        generation=1,
        reuse_class="stale_replay",
    ),
    RotationCase(
        name="stale_replay_much_later",
        used=(50 * MINUTE, None),
        outcome="reused",
        generation=1,
        reuse_class="stale_replay",
    ),
    RotationCase(
        name="stale_replay_measured_from_arrival",
        used=(40 * SECOND, None),
        waited=5 * SECOND,
        outcome="reused",
        generation=1,
        reuse_class="stale_replay",
    ),
    # A token whose successor was used too, inside the interval of its own first use: a
    # delayed duplicate, refused as superseded; nothing changes but its audit row.
    RotationCase(
        name="superseded",
        used=(20 * SECOND, 10 * SECOND, None),
        outcome="superseded",
        generation=1,
        reuse_class="ancestor_inside_interval",
    ),
    RotationCase(
        name="superseded_at_reuse_interval",
        used=(30 * SECOND, 10 * SECOND, None),
        outcome="superseded",
        generation=1,
        reuse_class="ancestor_inside_interval",
    ),
    RotationCase(
        name="superseded_two_generations_back",
        used=(25 * SECOND, 20 * SECOND, 10 * SECOND, None),
        outcome="superseded",
        generation=1,
        reuse_class="ancestor_inside_interval",
    ),
    RotationCase(
        name="superseded_measured_from_arrival",
        used=(40 * SECOND, 20 * SECOND, None),
        waited=15 * SECOND,
        outcome="superseded",
        generation=1,
        reuse_class="ancestor_inside_interval",
    ),
    # ... and outside it: an ancestor replay, theft.
    RotationCase(
        name="ancestor_replay",
        used=(31 * SECOND, 10 * SECOND, None),
        outcome="reused",
        generation=1,
        reuse_class="ancestor_replay",
    ),
    RotationCase(
        name="ancestor_replay_two_generations_back",
        used=(3 * MINUTE, 2 * MINUTE, MINUTE, None),
        present=2,
        outcome="reused",
        generation=2,
        reuse_class="ancestor_replay",
    ),
    # The session's refresh limit used up: a new rotation is refused and nothing changes;
    # a retry (its rotation was counted), a superseded duplicate and theft are answered as ever.
    RotationCase(name="limited", may_rotate=False, outcome="limited", generation=1),
    RotationCase(
        name="retried_while_limited",
        used=(10 * SECOND, None),
        may_rotate=False,
        outcome="retried",
        generation=1,
        reuse_class="retry_inside_interval",
        slid_to=HOUR,
    ),
    RotationCase(
        name="superseded_while_limited",
        used=(20 * SECOND, 10 * SECOND, None),
        may_rotate=False,
        outcome="superseded",
        generation=1,
        reuse_class="ancestor_inside_interval",
    ),
    RotationCase(
        name="stale_replay_while_limited",
        used=(31 * SECOND, None),
        may_rotate=False,
        outcome="reused",
        generation=1,
        reuse_class="stale_replay",
    ),
    RotationCase(
        name="revoked_session_while_limited",
        revoked=True,
        may_rotate=False,
        outcome="unusable",
        generation=1,
        why=Unusable.revoked,
    ),
    # An unusable session: nothing changes, whatever the token.
    RotationCase(
        name="idle_deadline_reached",
        idle_in=timedelta(0),
        outcome="unusable",
        generation=1,
        why=Unusable.idle_deadline,
    ),
    RotationCase(
        name="idle_deadline_passed",
        idle_in=-MINUTE,
        outcome="unusable",
        generation=1,
        why=Unusable.idle_deadline,
    ),
    RotationCase(
        name="absolute_deadline_reached",
        absolute_in=timedelta(0),
        outcome="unusable",
        generation=1,
        why=Unusable.absolute_deadline,
    ),
    RotationCase(
        name="absolute_deadline_passed",
        idle_in=-MINUTE,
        absolute_in=-MINUTE,
        outcome="unusable",
        generation=1,
        why=Unusable.absolute_deadline,
    ),
    RotationCase(
        name="revoked_session",
        revoked=True,
        outcome="unusable",
        generation=1,
        why=Unusable.revoked,
    ),
    RotationCase(
        name="revoked_session_replay_is_not_reuse",
        used=(10 * MINUTE, None),
        revoked=True,
        outcome="unusable",
        generation=1,
        why=Unusable.revoked,
    ),
    RotationCase(
        name="inactive_user",
        user_active=False,
        outcome="unusable",
        generation=1,
        why=Unusable.user_inactive,
    ),
    RotationCase(
        name="expired_session_replay_is_not_reuse",
        used=(10 * MINUTE, None),
        idle_in=-SECOND,
        present=1,
        outcome="unusable",
        generation=1,
        why=Unusable.idle_deadline,
    ),
    # Tokens the named session does not own.
    RotationCase(name="unknown_token", present="unknown_token", outcome="invalid"),
    RotationCase(name="token_of_another_session", present="other_session", outcome="invalid"),
    RotationCase(name="unknown_session", present="unknown_session", outcome="invalid"),
]


@dataclass
class SeededSession:
    user_id: uuid.UUID
    email: str
    session_id: uuid.UUID
    token_ids: list[uuid.UUID]  # by generation - 1
    token_hashes: list[bytes]
    other_session_id: uuid.UUID
    other_token_hash: bytes


async def _seed_session(engine: AsyncEngine, case: RotationCase, now: datetime) -> SeededSession:
    email = _email()
    created = now - 2 * HOUR
    async with engine.begin() as conn:
        user_id = await users.insert_user(
            conn, email=email, password_hash=PASSWORD_HASH, role="user", now=created
        )
        session_id = uuid.uuid4()
        await sessions.insert_session(
            conn,
            session_id=session_id,
            user_id=user_id,
            device_name="rules",
            user_agent=USER_AGENT,
            ip=IP,
            now=created,
            idle_expires_at=now + case.idle_in,
            absolute_expires_at=now + case.absolute_in,
        )
        token_ids: list[uuid.UUID] = []
        token_hashes: list[bytes] = []
        token_created = created
        for generation, used_ago in enumerate(case.used, start=1):
            token_hash = secrets.token_bytes(32)
            token_id = await sessions.insert_refresh_token(
                conn,
                session_id=session_id,
                token_hash=token_hash,
                parent_id=token_ids[-1] if token_ids else None,
                generation=generation,
                now=token_created,
            )
            if used_ago is not None:
                token_created = now - used_ago
                assert await sessions.claim_token(conn, token_id, now=token_created)
            token_ids.append(token_id)
            token_hashes.append(token_hash)
        # Another session of the same user, live, with a fresh token.
        other_session_id = uuid.uuid4()
        other_token_hash = secrets.token_bytes(32)
        await sessions.insert_session(
            conn,
            session_id=other_session_id,
            user_id=user_id,
            device_name="other",
            user_agent=USER_AGENT,
            ip=IP,
            now=created,
            idle_expires_at=now + 10 * MINUTE,
            absolute_expires_at=now + 8 * HOUR,
        )
        await sessions.insert_refresh_token(
            conn,
            session_id=other_session_id,
            token_hash=other_token_hash,
            parent_id=None,
            generation=1,
            now=created,
        )
        if case.revoked:
            await sessions.revoke_sessions(
                conn, now=now - MINUTE, reason="logout", session_id=session_id
            )
        if not case.user_active:
            await users.set_active(conn, user_id, active=False)
    return SeededSession(
        user_id, email, session_id, token_ids, token_hashes, other_session_id, other_token_hash
    )


class BatchedStore(PostgresSessionStore):
    """Each rotation goes in one batch with a fresh neighbour session's, which must rotate."""

    async def rotate(self, request: RotationRequest) -> Rotation:
        neighbour_case = RotationCase(name="neighbour", outcome="rotated")
        neighbour = await _seed_session(self._engine, neighbour_case, request.now)
        theirs = replace(
            request,
            session_id=neighbour.session_id,
            token_hash=neighbour.token_hashes[0],
            successor_id=uuid.uuid4(),
            successor_hash=secrets.token_bytes(32),
            arrived_at=request.now,
            may_rotate=True,
        )
        mine, their_rotation = await asyncio.gather(super().rotate(request), super().rotate(theirs))
        assert their_rotation.outcome == "rotated"
        # Whatever the rule wrote (its audit row), it wrote in the neighbour's transaction.
        async with self._engine.connect() as conn:
            transactions = await conn.scalar(
                text(
                    "SELECT count(DISTINCT xmin::text) FROM audit_events"
                    " WHERE session_id IN (:mine, :theirs) AND created_at = :now"
                ),
                {"mine": request.session_id, "theirs": theirs.session_id, "now": request.now},
            )
        assert transactions == 1
        return mine


def _expected_audit(case: RotationCase) -> tuple[str, dict[str, object]] | None:
    if case.outcome == "rotated":
        return "refresh.rotated", {"generation": case.generation}
    if case.outcome == "retried":
        return "refresh.retried", {"reuse_class": case.reuse_class}
    if case.outcome == "superseded":
        return "refresh.superseded", {
            "reuse_class": case.reuse_class,
            "generation": case.generation,
        }
    if case.outcome == "reused":
        return "refresh.reuse_detected", {
            "reuse_class": case.reuse_class,
            "generation": case.generation,
        }
    return None


@pytest.mark.parametrize("case", ROTATION_CASES, ids=lambda c: c.name)
async def test_rotation_rule(env: Env, case: RotationCase) -> None:
    # The table itself: "unusable" exactly when SessionState.check says why.
    if case.outcome != "invalid":
        assert (case.outcome == "unusable") == (case.why is not None)
    assert (case.reuse_class is not None) == (case.outcome in ("retried", "superseded", "reused"))
    now = _now()
    seeded = await _seed_session(env.engine, case, now)
    sid = seeded.session_id

    # The Python side of the rule, on the state as stored.
    before = await env.store.load(sid)
    assert before is not None
    assert before.check(now) == case.why
    assert before.is_usable_at(now) == (case.why is None)

    session_before = await _session_row(env.engine, sid)
    tokens_before = await _token_rows(env.engine, sid)
    other_session_before = await _session_row(env.engine, seeded.other_session_id)
    other_tokens_before = await _token_rows(env.engine, seeded.other_session_id)
    assert session_before is not None

    if isinstance(case.present, int):
        token_hash = seeded.token_hashes[case.present - 1]
    elif case.present == "other_session":
        token_hash = seeded.other_token_hash
    elif case.present == "unknown_session":
        token_hash = seeded.token_hashes[0]
    else:
        token_hash = secrets.token_bytes(32)
    named = uuid.uuid4() if case.present == "unknown_session" else sid
    successor_id, successor_hash = uuid.uuid4(), secrets.token_bytes(32)
    rotation = await env.store.rotate(
        RotationRequest(
            session_id=named,
            token_hash=token_hash,
            successor_id=successor_id,
            successor_hash=successor_hash,
            now=now,
            policy=POLICY,
            ip=IP,
            user_agent=USER_AGENT,
            arrived_at=now - case.waited,
            may_rotate=case.may_rotate,
        )
    )

    assert (rotation.outcome, rotation.reuse_class, rotation.generation) == (
        case.outcome,
        case.reuse_class,
        case.generation,
    )

    # The returned session: as stored before, with the slide or the revocation.
    expected_state: SessionState | None = None
    if case.outcome != "invalid":
        expected_state = before
        if case.slid_to is not None:
            expected_state = replace(expected_state, idle_expires_at=now + case.slid_to)
        if case.outcome == "reused":
            expected_state = replace(expected_state, revoked_at=now)
    assert rotation.session == expected_state
    if rotation.session is not None:
        expected_why = Unusable.revoked if case.outcome == "reused" else case.why
        assert rotation.session.check(now) == expected_why

    # The stored rows: what the rule changes, and nothing else.
    expected_session = dict(session_before)
    expected_tokens = {k: dict(v) for k, v in tokens_before.items()}
    if case.outcome in ("rotated", "retried") and case.slid_to is not None and case.slide_written:
        expected_session.update(last_seen_at=now, idle_expires_at=now + case.slid_to)
    if case.outcome == "rotated":
        assert isinstance(case.present, int)
        parent = expected_tokens[seeded.token_ids[case.present - 1]]
        parent["used_at"] = now
        expected_tokens[successor_id] = {
            "id": successor_id,
            "session_id": sid,
            "parent_id": parent["id"],
            "generation": case.generation,
            "token_hash": successor_hash,
            "created_at": now,
            "used_at": None,
            "revoked_at": None,
        }
    if case.outcome == "reused":
        expected_session.update(revoked_at=now, revoke_reason="refresh_token_reused")
        for token in expected_tokens.values():
            token["revoked_at"] = now
    assert await _session_row(env.engine, sid) == expected_session
    assert await _token_rows(env.engine, sid) == expected_tokens
    # No rule of this session touches another.
    assert await _session_row(env.engine, seeded.other_session_id) == other_session_before
    assert await _token_rows(env.engine, seeded.other_session_id) == other_tokens_before

    audit = _expected_audit(case)
    expected_audit_rows = (
        [(audit[0], seeded.user_id, IP, USER_AGENT, audit[1], now)] if audit else []
    )
    assert await _audit_rows(env.engine, sid) == expected_audit_rows
    assert await _audit_rows(env.engine, seeded.other_session_id) == []
    if case.present == "unknown_session":
        assert await _audit_rows(env.engine, named) == []


async def test_rotation_chain_through_the_store(env: Env) -> None:
    """Rules in sequence through the store alone: rotate, retry, rotate the successor, replay
    the first token inside its interval (superseded) and after it (an ancestor replay), then
    the session is unusable for every token."""
    now = _now()
    seeded = await _seed_session(env.engine, RotationCase(name="chain", outcome="rotated"), now)
    sid = seeded.session_id
    t1 = seeded.token_hashes[0]
    t2, t3 = secrets.token_bytes(32), secrets.token_bytes(32)

    async def rotate(token: bytes, successor: bytes, at: datetime) -> Rotation:
        return await env.store.rotate(
            RotationRequest(sid, token, uuid.uuid4(), successor, at, POLICY, IP, USER_AGENT, at)
        )

    first = await rotate(t1, t2, now)
    retry = await rotate(t1, secrets.token_bytes(32), now + 10 * SECOND)
    second = await rotate(t2, t3, now + 20 * SECOND)
    duplicate = await rotate(t1, secrets.token_bytes(32), now + 25 * SECOND)
    replay = await rotate(t1, secrets.token_bytes(32), now + 31 * SECOND)
    after = await rotate(t3, secrets.token_bytes(32), now + 32 * SECOND)
    assert [
        (r.outcome, r.generation, r.reuse_class) for r in (first, retry, second, duplicate)
    ] == [
        ("rotated", 2, None),
        ("retried", 1, "retry_inside_interval"),
        ("rotated", 3, None),
        ("superseded", 1, "ancestor_inside_interval"),
    ]
    assert (replay.outcome, replay.generation, replay.reuse_class) == (
        "reused",
        1,
        "ancestor_replay",
    )
    assert (after.outcome, after.generation) == ("unusable", 3)
    assert after.session is not None
    assert after.session.check(now + 32 * SECOND) is Unusable.revoked
    tokens = await _token_rows(env.engine, sid)
    assert sorted(t["generation"] for t in tokens.values()) == [1, 2, 3]
    assert {t["revoked_at"] for t in tokens.values()} == {now + 31 * SECOND}
    events = [(row[0], row[4]) for row in await _audit_rows(env.engine, sid)]
    assert events == [
        ("refresh.rotated", {"generation": 2}),
        ("refresh.retried", {"reuse_class": "retry_inside_interval"}),
        ("refresh.rotated", {"generation": 3}),
        ("refresh.superseded", {"reuse_class": "ancestor_inside_interval", "generation": 1}),
        ("refresh.reuse_detected", {"reuse_class": "ancestor_replay", "generation": 1}),
    ]


# --- session start ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StartCase:
    name: str
    # The user as stored when the session starts.
    known: bool = True
    hash_changed: bool = False
    active: bool = True
    failed_logins: int = 0
    locked_for: timedelta | None = None  # locked_until - now
    mfa_enabled: bool = False
    # Expected, the same on every store.
    starts: bool


START_CASES = [
    StartCase(name="starts", starts=True),
    StartCase(name="starts_and_clears_failures", failed_logins=3, starts=True),
    StartCase(
        name="starts_when_lock_ends_now", failed_logins=5, locked_for=timedelta(0), starts=True
    ),
    StartCase(name="starts_after_lock_ended", failed_logins=5, locked_for=-MINUTE, starts=True),
    StartCase(name="password_hash_changed", hash_changed=True, starts=False),
    StartCase(name="inactive_user", active=False, starts=False),
    StartCase(name="locked", failed_logins=5, locked_for=SECOND, starts=False),
    StartCase(name="unknown_user", known=False, starts=False),
    # A second factor is owed: never a session from the password alone (docs/mfa.md).
    StartCase(name="second_factor_owed", mfa_enabled=True, starts=False),
]


@pytest.mark.parametrize("case", START_CASES, ids=lambda c: c.name)
async def test_start_rule(env: Env, case: StartCase) -> None:
    now = _now()
    email = _email()
    user_id = uuid.uuid4()
    locked_until = now + case.locked_for if case.locked_for is not None else None
    if case.known:
        async with env.engine.begin() as conn:
            user_id = await users.insert_user(
                conn, email=email, password_hash=PASSWORD_HASH, role="admin", now=now - HOUR
            )
            if case.failed_logins or locked_until:
                await users.record_login_failure(
                    conn, user_id, failed_logins=case.failed_logins, locked_until=locked_until
                )
            if case.hash_changed:
                await users.set_password_hash(conn, user_id, "$dummy$changed", now=now - MINUTE)
            if not case.active:
                await users.set_active(conn, user_id, active=False)
            if case.mfa_enabled:
                await users.set_mfa_enabled(conn, user_id, enabled=True)
    user_before = await env.store.find_account(user_id)

    start = SessionStart(
        user_id=user_id,
        password_hash=PASSWORD_HASH,
        session_id=uuid.uuid4(),
        token_id=uuid.uuid4(),
        token_hash=secrets.token_bytes(32),
        now=now,
        idle_expires_at=now + HOUR,
        absolute_expires_at=now + 8 * HOUR,
        device_name="laptop",
        user_agent=USER_AGENT,
        ip=IP,
    )
    started = await env.store.start(start)

    sid = start.session_id
    user_after = await env.store.find_account(user_id)
    if not case.starts:
        assert started is None
        assert user_after == user_before  # failures and lock kept, nothing cleared
        assert await _session_row(env.engine, sid) is None
        assert await _token_rows(env.engine, sid) == {}
        assert await _audit_rows(env.engine, sid) == []
        assert await env.store.session_of_token(start.token_hash) is None
        return

    assert started == StartedFor(email=email, role="admin")
    assert user_before is not None
    assert user_after == replace(user_before, failed_logins=0, locked_until=None)
    assert await _session_row(env.engine, sid) == {
        "id": sid,
        "user_id": user_id,
        "device_name": "laptop",
        "user_agent": USER_AGENT,
        "ip": IP,
        "created_at": now,
        "last_seen_at": now,
        "idle_expires_at": now + HOUR,
        "absolute_expires_at": now + 8 * HOUR,
        "revoked_at": None,
        "revoke_reason": None,
        "dpop_jkt": None,  # a login without a DPoP proof: an unbound session
        "amr": None,  # a password session
        "auth_time": None,  # its created_at
        "factor_at": None,
    }
    assert await _token_rows(env.engine, sid) == {
        start.token_id: {
            "id": start.token_id,
            "session_id": sid,
            "parent_id": None,
            "generation": 1,
            "token_hash": start.token_hash,
            "created_at": now,
            "used_at": None,
            "revoked_at": None,
        }
    }
    assert await _audit_rows(env.engine, sid) == [
        ("login.succeeded", user_id, IP, USER_AGENT, {}, now)
    ]
    state = await env.store.load(sid)
    assert state == SessionState(
        id=sid,
        user_id=user_id,
        email=email,
        role="admin",
        user_active=True,
        created_at=now,
        idle_expires_at=now + HOUR,
        absolute_expires_at=now + 8 * HOUR,
        revoked_at=None,
    )
    assert state.check(now) is None
