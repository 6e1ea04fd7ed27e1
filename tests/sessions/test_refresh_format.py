"""Refresh tokens name their session; the name is a routing hint, never trusted (issue 8)."""

from __future__ import annotations

import base64
import uuid
from typing import Any

from sqlalchemy import func, select, update

from app.audit.models import AuditEvent
from app.core.db import table_of
from app.core.security import new_opaque_token
from app.sessions.models import RefreshToken, Session
from app.sessions.tokens import RefreshTokenCodec
from tests.conftest import Harness, error_code, make_settings, start_harness

_tokens = table_of(RefreshToken)
_sessions = table_of(Session)
_audit = table_of(AuditEvent)


def _prefix(session_id: str) -> str:
    return base64.urlsafe_b64encode(uuid.UUID(session_id).bytes).rstrip(b"=").decode()


async def _count(h: Harness, table: Any) -> int:
    async with h.ctx.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


async def test_tokens_name_their_session_and_keep_256_random_bits(harness: Harness) -> None:
    tokens = await harness.login(await harness.create_user())
    session_id = tokens["session"]["id"]
    prefix, _, secret = tokens["refresh_token"].partition(".")
    assert prefix == _prefix(session_id)
    assert len(base64.urlsafe_b64decode(secret + "=")) == 32
    rotated = (await harness.refresh(tokens["refresh_token"])).json()["refresh_token"]
    assert rotated.partition(".")[0] == prefix
    assert RefreshTokenCodec.session_of(rotated) == uuid.UUID(session_id)


def test_session_of_rejects_what_is_not_a_session_id() -> None:
    for token in ("", ".", "abc.def", "x" * 22, "!" * 22 + ".abc", new_opaque_token()):
        assert RefreshTokenCodec.session_of(token) is None


async def test_a_token_naming_another_session_is_invalid_and_changes_nothing(
    harness: Harness,
) -> None:
    email = await harness.create_user()
    victim, attacker = await harness.login(email), await harness.login(email)
    # The attacker's real secret under the victim's session id.
    forged = _prefix(victim["session"]["id"]) + "." + attacker["refresh_token"].partition(".")[2]
    rows, events = await _count(harness, _tokens), await _count(harness, _audit)
    response = await harness.refresh(forged)
    assert response.status_code == 401
    assert error_code(response) == "refresh_token_invalid"
    assert (await _count(harness, _tokens), await _count(harness, _audit)) == (rows, events)
    for tokens in (victim, attacker):  # both sessions untouched
        assert (await harness.refresh(tokens["refresh_token"])).status_code == 200


async def test_a_token_from_before_session_prefixes_still_rotates(harness: Harness) -> None:
    tokens = await harness.login(await harness.create_user())
    session_id = uuid.UUID(tokens["session"]["id"])
    legacy = new_opaque_token()  # the old format: the secret alone
    codec = harness.ctx.refresh_codec
    async with harness.ctx.engine.begin() as conn:
        await conn.execute(
            update(_tokens)
            .where(_tokens.c.session_id == session_id)
            .values(token_hash=codec.hash(legacy))
        )
    response = await harness.refresh(legacy)
    assert response.status_code == 200, response.text
    successor = response.json()["refresh_token"]
    assert RefreshTokenCodec.session_of(successor) == session_id
    # A retry of the legacy token gets the same successor; the successor rotates on.
    assert (await harness.refresh(legacy)).json()["refresh_token"] == successor
    assert (await harness.refresh(successor)).status_code == 200


async def test_an_unknown_token_under_a_real_session_id_is_invalid(harness: Harness) -> None:
    tokens = await harness.login(await harness.create_user())
    guess = _prefix(tokens["session"]["id"]) + "." + new_opaque_token()
    response = await harness.refresh(guess)
    assert error_code(response) == "refresh_token_invalid"
    async with harness.ctx.engine.connect() as conn:
        revoked = (
            await conn.execute(
                select(_sessions.c.revoked_at).where(
                    _sessions.c.id == uuid.UUID(tokens["session"]["id"])
                )
            )
        ).scalar_one()
    assert revoked is None
    assert (await harness.refresh(tokens["refresh_token"])).status_code == 200


async def test_forged_tokens_do_not_use_up_a_sessions_refresh_limit(database_url: str) -> None:
    settings = make_settings(
        database_url, rate_limits_enabled=True, rate_limit_refresh_session="3/hour"
    )
    async for h in start_harness(settings):
        tokens = await h.login(await h.create_user())
        forged = _prefix(tokens["session"]["id"]) + "." + new_opaque_token()
        for _ in range(5):
            assert error_code(await h.refresh(forged)) == "refresh_token_invalid"
        token = tokens["refresh_token"]
        for _ in range(3):  # the owner's full budget is still there
            response = await h.refresh(token)
            assert response.status_code == 200
            token = response.json()["refresh_token"]
        limited = await h.refresh(token)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert (await h.refresh(token)).status_code == 429  # refused before any change
