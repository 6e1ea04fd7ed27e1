"""Property test: random refresh / replay / wait / logout sequences against a model of the rules.

The model is the specification of issue 3 written as plainly as possible; hypothesis drives
random sequences through the real app and checks that every answer agrees with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Harness, bearer, make_settings, start_harness

REUSE_INTERVAL = 30
ACCESS_TTL = 300
LEEWAY = 30

Op = tuple[str, int]
# Weighted so that the interesting boundaries (replays at exactly the reuse interval, ancestor
# replays) come up often: logout is rare because it ends the interesting part of a sequence.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("refresh"), st.integers(min_value=0, max_value=2)),  # k-th newest
        st.tuples(st.just("refresh"), st.integers(min_value=0, max_value=2)),
        st.tuples(st.just("wait"), st.sampled_from([0, 29, 30, 31, 200])),
        st.tuples(st.just("wait"), st.sampled_from([0, 29, 30, 31, 200])),
        st.tuples(st.just("logout"), st.just(0)),
    ),
    min_size=1,
    max_size=25,
)


@dataclass
class Model:
    tokens: list[str]
    access_token: str
    access_issued: int = 0
    now: int = 0
    used_at: dict[int, int] = field(default_factory=dict)
    revoked: bool = False

    def expected_refresh(self, index: int) -> str:
        newest = len(self.tokens) - 1
        if self.revoked:
            return "session_revoked"
        if index == newest:
            return "rotate"
        if self.now - self.used_at[index] <= REUSE_INTERVAL:
            # The newest token's parent: a retry; an older one: a delayed duplicate.
            return "retry" if index == newest - 1 else "refresh_token_superseded"
        return "refresh_token_reused"

    def expected_me(self) -> str:
        if self.now >= self.access_issued + ACCESS_TTL + LEEWAY:
            return "token_expired"
        return "session_revoked" if self.revoked else "ok"


async def _check(h: Harness, model: Model) -> None:
    me = await h.client.get("/auth/me", headers=bearer(model.access_token))
    expected = model.expected_me()
    if expected == "ok":
        assert me.status_code == 200, me.text
    else:
        assert me.json()["error"]["code"] == expected


async def _apply(h: Harness, model: Model, op: Op) -> None:
    kind, arg = op
    if kind == "wait":
        h.clock.advance(arg)
        model.now += arg
    elif kind == "logout":
        response = await h.client.post("/auth/logout", headers=bearer(model.access_token))
        if model.expected_me() == "ok":
            assert response.status_code == 204
            model.revoked = True
        else:
            assert response.json()["error"]["code"] == model.expected_me()
    else:
        index = max(0, len(model.tokens) - 1 - arg)
        expected = model.expected_refresh(index)
        response = await h.refresh(model.tokens[index])
        if expected in {"rotate", "retry"}:
            assert response.status_code == 200, (expected, response.text)
            body = response.json()
            model.access_token, model.access_issued = body["access_token"], model.now
            if expected == "rotate":
                model.used_at[index] = model.now
                model.tokens.append(body["refresh_token"])
            else:
                assert body["refresh_token"] == model.tokens[index + 1]
        else:
            assert response.status_code == 401
            assert response.json()["error"]["code"] == expected
            model.revoked = model.revoked or expected == "refresh_token_reused"
    await _check(h, model)


async def _scenario(h: Harness, ops: list[Op]) -> None:
    """One example: a fresh user and session, so examples sharing an app cannot meet (the
    model's times are relative to the login; the shared clock only moves forward)."""
    tokens = await h.login(await h.create_user())
    model = Model(tokens=[tokens["refresh_token"]], access_token=tokens["access_token"])
    for op in ops:
        await _apply(h, model, op)


@pytest.mark.parametrize("engine", ["sqlite", "postgres"])
def test_service_agrees_with_the_model(engine: str, request: pytest.FixtureRequest) -> None:
    database_url: str = request.getfixturevalue(f"{engine}_url")
    # One app for all examples (its startup costs more than an example), on its own loop:
    # hypothesis calls `run` synchronously. No key reload while the shared clock runs ahead.
    loop = asyncio.new_event_loop()
    app_settings = make_settings(database_url, key_reload_interval=300)
    harnesses = cast(AsyncGenerator[Harness, None], start_harness(app_settings))
    h = loop.run_until_complete(anext(harnesses))
    try:

        @settings(
            max_examples=100,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )
        @given(ops=operations)
        def run(ops: list[Op]) -> None:
            loop.run_until_complete(_scenario(h, ops))

        run()
    finally:
        loop.run_until_complete(harnesses.aclose())
        loop.close()
