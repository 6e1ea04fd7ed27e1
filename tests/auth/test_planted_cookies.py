"""Issue 15 item 11: a refresh cookie planted from a sibling subdomain (a `__Secure-` cookie
may carry Domain=example.com) must not break the victim's refresh or logout, nor swap in the
planter's session. Of several refresh cookies, the one the CSRF token names is used."""

from __future__ import annotations

import httpx
import pytest

from app.auth.transport import REFRESH_COOKIE
from tests.auth.test_cookie_mode import COOKIE, JSON, cookie_login, csrf_of, set_cookies
from tests.conftest import Harness, bearer, error_code


def _refresh_cookie_of(response: httpx.Response) -> str:
    values = {str(c["value"]) for c in set_cookies(response) if c["name"] == REFRESH_COOKIE}
    assert len(values) == 1
    return values.pop()


async def _post(h: Harness, path: str, cookies: list[str], csrf: str) -> httpx.Response:
    jar = "; ".join(f"{REFRESH_COOKIE}={value}" for value in cookies)
    return await h.client.post(
        path, content=b"{}", headers={**COOKIE, **JSON, "cookie": jar, "X-CSRF-Token": csrf}
    )


@pytest.mark.parametrize("planted_first", [False, True])
async def test_a_planted_session_cookie_neither_breaks_nor_replaces_the_victims(
    harness: Harness, planted_first: bool
) -> None:
    victim = await cookie_login(harness, await harness.create_user())
    planter = await cookie_login(harness, await harness.create_user())
    ours, planted = _refresh_cookie_of(victim), _refresh_cookie_of(planter)
    cookies = [planted, ours] if planted_first else [ours, planted]
    refreshed = await _post(harness, "/auth/refresh", cookies, csrf_of(victim))
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["session"]["id"] == victim.json()["session"]["id"]
    # The planter's token was not touched: it still rotates for its own session.
    again = await _post(harness, "/auth/refresh", [planted], csrf_of(planter))
    assert again.status_code == 200


@pytest.mark.parametrize("planted_first", [False, True])
async def test_a_planted_garbage_cookie_does_not_break_refresh_or_logout(
    harness: Harness, planted_first: bool
) -> None:
    victim = await cookie_login(harness, await harness.create_user())
    ours, planted = _refresh_cookie_of(victim), "garbage-from-a-sibling"
    cookies = [planted, ours] if planted_first else [ours, planted]
    refreshed = await _post(harness, "/auth/refresh", cookies, csrf_of(victim))
    assert refreshed.status_code == 200, refreshed.text
    current = _refresh_cookie_of(refreshed)
    cookies = [planted, current] if planted_first else [current, planted]
    logout = await _post(harness, "/auth/logout", cookies, csrf_of(victim))
    assert logout.status_code == 204
    me = await harness.client.get("/auth/me", headers=bearer(refreshed.json()["access_token"]))
    assert error_code(me) == "session_revoked"


async def test_logout_with_a_planted_cookie_ends_the_victims_session_only(
    harness: Harness,
) -> None:
    victim = await cookie_login(harness, await harness.create_user())
    planter = await cookie_login(harness, await harness.create_user())
    cookies = [_refresh_cookie_of(victim), _refresh_cookie_of(planter)]
    assert (await _post(harness, "/auth/logout", cookies, csrf_of(victim))).status_code == 204
    victim_me = await harness.client.get("/auth/me", headers=bearer(victim.json()["access_token"]))
    assert error_code(victim_me) == "session_revoked"
    planter_me = await harness.client.get(
        "/auth/me", headers=bearer(planter.json()["access_token"])
    )
    assert planter_me.status_code == 200


async def test_without_a_matching_csrf_token_every_candidate_is_refused(
    harness: Harness,
) -> None:
    victim = await cookie_login(harness, await harness.create_user())
    planter = await cookie_login(harness, await harness.create_user())
    stranger = await cookie_login(harness, await harness.create_user())
    cookies = [_refresh_cookie_of(victim), _refresh_cookie_of(planter)]
    refused = await _post(harness, "/auth/refresh", cookies, csrf_of(stranger))
    assert refused.status_code == 403
    assert error_code(refused) == "csrf_failed"


@pytest.mark.parametrize("planted", [4, 40])
async def test_many_planted_cookies_before_ours_do_not_hide_it(
    harness: Harness, planted: int
) -> None:
    """Browsers send same-path cookies oldest first, and a rotated cookie keeps its creation
    time: planting a few before the victim's next login puts them all ahead of ours."""
    victim = await cookie_login(harness, await harness.create_user())
    cookies = [f"planted-{n}" for n in range(planted)] + [_refresh_cookie_of(victim)]
    refreshed = await _post(harness, "/auth/refresh", cookies, csrf_of(victim))
    assert refreshed.status_code == 200, refreshed.text
    cookies = [f"planted-{n}" for n in range(planted)] + [_refresh_cookie_of(refreshed)]
    assert (await _post(harness, "/auth/logout", cookies, csrf_of(victim))).status_code == 204
