"""A session bound to a DPoP key (RFC 9449) rotates only with a proof by that key, on both
stores (PostgreSQL's function, the portable one on SQLite): a stolen refresh token without the
key is refused, changes nothing, and does not log its owner out."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.core.client import ClientInfo
from app.core.db import table_of
from app.dpop.errors import InvalidDPoPProof
from app.sessions.models import Session
from tests.conftest import Harness

KEY, OTHER = "k" * 43, "o" * 43
_sessions, _audit = table_of(Session), table_of(AuditEvent)


async def start(h: Harness, jkt: str | None) -> str:
    email = await h.create_user()
    sessions = h.ctx.sessions
    user = await sessions.find_login_candidate(email)
    assert user is not None
    issued = await sessions.start(user, ClientInfo(), None, h.clock.now(), dpop_jkt=jkt)
    assert issued is not None
    async with h.ctx.engine.connect() as conn:
        stored = (
            await conn.execute(
                select(_sessions.c.dpop_jkt).where(_sessions.c.id == issued.session.id)
            )
        ).scalar_one()
    assert stored == jkt
    return issued.refresh_token


async def refused_refreshes(h: Harness) -> int:
    async with h.ctx.engine.connect() as conn:
        rows = await conn.execute(
            select(_audit.c.id).where(_audit.c.event == "refresh.dpop_refused")
        )
        return len(rows.all())


async def test_a_bound_session_rotates_only_with_its_keys_proof(harness: Harness) -> None:
    sessions = harness.ctx.sessions
    token = await start(harness, KEY)
    before = await refused_refreshes(harness)
    for jkt in (None, OTHER):  # no proof, or another key's: the thief's two options
        with pytest.raises(InvalidDPoPProof):
            await sessions.rotate(token, ClientInfo(), dpop_jkt=jkt)
    assert await refused_refreshes(harness) == before + 2
    # Nothing changed: the owner's token still rotates, as its first use, not as a reuse.
    rotated = await sessions.rotate(token, ClientInfo(), dpop_jkt=KEY)
    assert rotated.session.revoked_at is None
    again = await sessions.rotate(rotated.refresh_token, ClientInfo(), dpop_jkt=KEY)
    assert again.session.revoked_at is None


async def test_an_unbound_session_rotates_with_or_without_a_proof(harness: Harness) -> None:
    sessions = harness.ctx.sessions
    token = await start(harness, None)
    rotated = await sessions.rotate(token, ClientInfo(), dpop_jkt=None)
    again = await sessions.rotate(rotated.refresh_token, ClientInfo(), dpop_jkt=KEY)
    assert again.session.revoked_at is None
