"""A copied cookie jar cannot end a DPoP-bound browser session (from the security review of
issue 18): a cookie logout (refresh cookie and CSRF token, no access token) of a bound session
needs a proof by its key, as its refresh does; with the proof it works."""

from __future__ import annotations

from tests.auth.test_cookie_mode import COOKIE, JSON, cookie_header, csrf_of
from tests.conftest import Harness
from tests.dpop.test_routes import Client


async def test_a_stolen_cookie_jar_without_the_key_cannot_log_the_owner_out(
    harness: Harness,
) -> None:
    owner = Client(harness)
    login = await owner.login(await harness.create_user(), **COOKIE)
    assert login.status_code == 200, login.text[:200]
    assert login.json()["token_type"] == "DPoP"
    jar = {
        **COOKIE,
        **JSON,
        **cookie_header(login, "/auth/logout"),
        "X-CSRF-Token": csrf_of(login),
    }
    thief = await harness.client.post("/auth/logout", content=b"{}", headers=jar)
    assert thief.status_code in {400, 401}, thief.status_code
    # The owner's session lives on: its next refresh (with its proof) rotates.
    refresh_jar = {
        **COOKIE,
        **JSON,
        **cookie_header(login, "/auth/refresh"),
        "X-CSRF-Token": csrf_of(login),
        "DPoP": owner.proof("POST", "/auth/refresh"),
    }
    mine = await harness.client.post("/auth/refresh", content=b"{}", headers=refresh_jar)
    assert mine.status_code == 200, mine.text[:200]


async def test_the_key_holder_logs_out_with_cookies_and_a_proof(harness: Harness) -> None:
    owner = Client(harness)
    login = await owner.login(await harness.create_user(), **COOKIE)
    jar = {
        **COOKIE,
        **JSON,
        **cookie_header(login, "/auth/logout"),
        "X-CSRF-Token": csrf_of(login),
        "DPoP": owner.proof("POST", "/auth/logout"),
    }
    assert (
        await harness.client.post("/auth/logout", content=b"{}", headers=jar)
    ).status_code == 204
