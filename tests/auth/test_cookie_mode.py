"""Cookie transport for browsers: checklist D27-D32 and E33-E35, through the real app."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest

from app.auth.transport import CSRF_COOKIE, DEVICE_COOKIE, REFRESH_COOKIE
from tests.conftest import PASSWORD, Harness, bearer, make_settings, start_harness

COOKIE = {"Session-Transport": "cookie"}
JSON = {"content-type": "application/json"}
ALLOWED_ORIGIN = "https://app.example.com"


def set_cookies(response: httpx.Response) -> list[dict[str, Any]]:
    """Each Set-Cookie header as {name, value, attrs (lower-case names)}."""
    parsed = []
    for header in response.headers.get_list("set-cookie"):
        name_value, *attrs = [part.strip() for part in header.split(";")]
        name, _, value = name_value.partition("=")
        attributes: dict[str, str | bool] = {}
        for attr in attrs:
            key, eq, val = attr.partition("=")
            attributes[key.lower()] = val if eq else True
        parsed.append({"name": name, "value": value, "attrs": attributes})
    return parsed


def cookie_header(response: httpx.Response, path: str) -> dict[str, str]:
    """The Cookie header a browser would send to `path` after this response."""
    jar = {}
    for cookie in set_cookies(response):
        cookie_path = str(cookie["attrs"].get("path", "/"))
        if path.startswith(cookie_path):
            jar[cookie["name"]] = cookie["value"]
    return {"cookie": "; ".join(f"{k}={v}" for k, v in jar.items())}


def csrf_of(response: httpx.Response) -> str:
    values = [c["value"] for c in set_cookies(response) if c["name"] == CSRF_COOKIE]
    assert len(values) == 1
    value: str = values[0]
    return value


async def cookie_login(h: Harness, email: str, **headers: str) -> httpx.Response:
    response = await h.client.post(
        "/auth/login",
        json={"email": email, "password": PASSWORD},
        headers={**COOKIE, **headers},
    )
    assert response.status_code == 200, response.text
    return response


async def cookie_refresh(
    h: Harness, previous: httpx.Response, *, csrf: str | None = None, **headers: str
) -> httpx.Response:
    token = csrf if csrf is not None else csrf_of(previous)
    return await h.client.post(
        "/auth/refresh",
        content=b"{}",
        headers={
            **COOKIE,
            **JSON,
            **cookie_header(previous, "/auth/refresh"),
            "X-CSRF-Token": token,
            **headers,
        },
    )


async def test_d27_cookie_attributes_and_prefixes(harness: Harness) -> None:
    response = await cookie_login(harness, await harness.create_user())
    assert response.json()["refresh_token"] is None
    cookies = set_cookies(response)
    refresh = [c for c in cookies if c["name"] == REFRESH_COOKIE]
    assert sorted(c["attrs"]["path"] for c in refresh) == ["/auth/logout", "/auth/refresh"]
    for cookie in refresh:
        attrs = cookie["attrs"]
        assert attrs["httponly"] is True
        assert attrs["secure"] is True
        assert str(attrs["samesite"]).lower() == "strict"
        assert "domain" not in attrs
        absolute = datetime.fromisoformat(response.json()["session"]["absolute_expires_at"])
        assert int(attrs["max-age"]) == int((absolute - harness.clock.now()).total_seconds())
        assert len(cookie["value"]) >= 43
    (csrf,) = [c for c in cookies if c["name"] == CSRF_COOKIE]
    assert csrf["name"].startswith("__Host-")
    assert csrf["attrs"]["path"] == "/"
    assert csrf["attrs"]["secure"] is True
    assert "domain" not in csrf["attrs"]
    assert "httponly" not in csrf["attrs"]  # the page must read it
    assert str(csrf["attrs"]["samesite"]).lower() == "strict"


async def test_cookie_refresh_rotates_and_retries_like_bearer(harness: Harness) -> None:
    login = await cookie_login(harness, await harness.create_user())
    first = await cookie_refresh(harness, login)
    assert first.status_code == 200, first.text
    assert first.json()["refresh_token"] is None
    old = cookie_header(login, "/auth/refresh")["cookie"]
    new = cookie_header(first, "/auth/refresh")["cookie"]
    assert old != new
    assert csrf_of(first) == csrf_of(login)  # bound to the session, not to the token
    retry = await cookie_refresh(harness, login)  # a second tab with the old cookie
    assert retry.status_code == 200
    assert cookie_header(retry, "/auth/refresh") == cookie_header(first, "/auth/refresh")
    me = await harness.client.get("/auth/me", headers=bearer(first.json()["access_token"]))
    assert me.status_code == 200


async def test_d28_login_starts_a_new_session_ignoring_prior_cookies(harness: Harness) -> None:
    email = await harness.create_user()
    first = await cookie_login(harness, email)
    second = await harness.client.post(
        "/auth/login",
        json={"email": email, "password": PASSWORD},
        headers={**COOKIE, **cookie_header(first, "/auth/refresh")},
    )
    assert second.json()["session"]["id"] != first.json()["session"]["id"]
    assert cookie_header(second, "/auth/refresh") != cookie_header(first, "/auth/refresh")
    assert csrf_of(second) != csrf_of(first)


async def test_d30_bearer_mode_never_sets_cookies(harness: Harness) -> None:
    email = await harness.create_user()
    login = await harness.client.post("/auth/login", json={"email": email, "password": PASSWORD})
    tokens = login.json()
    refreshed = await harness.refresh(tokens["refresh_token"])
    access = refreshed.json()["access_token"]
    responses = [
        login,
        refreshed,
        await harness.client.get("/auth/me", headers=bearer(access)),
        await harness.client.get("/auth/session-status", headers=bearer(access)),
        await harness.client.post("/auth/logout", headers=bearer(access)),
    ]
    for response in responses:
        assert response.status_code in {200, 204}
        assert "set-cookie" not in response.headers
        assert "clear-site-data" not in response.headers


async def test_d32_logout_clears_cookies_with_identical_attributes(harness: Harness) -> None:
    login = await cookie_login(harness, await harness.create_user())
    access = login.json()["access_token"]
    assert (await harness.client.get("/auth/logout", headers=bearer(access))).status_code == 405
    response = await harness.client.post(
        "/auth/logout", headers={**COOKIE, **JSON, **bearer(access)}
    )
    assert response.status_code == 204
    # Only our own cookies: Clear-Site-Data would wipe every cookie of the registrable
    # domain, other applications' too (opt-in, LOGOUT_CLEAR_SITE_DATA).
    assert "clear-site-data" not in response.headers
    cleared = {(c["name"], c["attrs"]["path"]): c for c in set_cookies(response)}
    # The device token outlives the session on purpose: it says this browser has logged in
    # before (docs/abuse.md), so the owner is not locked out by someone else's guesses.
    assert (DEVICE_COOKIE, "/") not in cleared
    for original in set_cookies(login):
        key = (original["name"], original["attrs"]["path"])
        if original["name"] == DEVICE_COOKIE:
            continue
        assert key in cleared, key
        expired = cleared[key]["attrs"]
        assert int(expired["max-age"]) == 0
        for attr in ("path", "secure", "samesite", "httponly"):
            assert expired.get(attr) == original["attrs"].get(attr), (key, attr)
    me = await harness.client.get("/auth/me", headers=bearer(access))
    assert me.json()["error"]["code"] == "session_revoked"
    assert (await cookie_refresh(harness, login)).json()["error"]["code"] == "session_revoked"


async def test_e33_refresh_without_or_with_foreign_csrf_token_is_refused(
    harness: Harness,
) -> None:
    victim = await cookie_login(harness, await harness.create_user())
    attacker = await cookie_login(harness, await harness.create_user())
    for csrf in ("", "forged", csrf_of(attacker)):
        response = await cookie_refresh(harness, victim, csrf=csrf)
        assert response.status_code == 403, csrf
        assert response.json()["error"]["code"] == "csrf_failed"
        assert "set-cookie" not in response.headers
    missing_header = await harness.client.post(
        "/auth/refresh",
        content=b"{}",
        headers={**COOKIE, **JSON, **cookie_header(victim, "/auth/refresh")},
    )
    assert missing_header.json()["error"]["code"] == "csrf_failed"
    # Nothing changed: the victim's cookie still rotates normally.
    assert (await cookie_refresh(harness, victim)).status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
    ],
)
async def test_e34_foreign_origin_cross_site_and_simple_bodies_are_refused(
    harness: Harness, headers: dict[str, str]
) -> None:
    login = await cookie_login(harness, await harness.create_user())
    response = await cookie_refresh(harness, login, **headers)
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "csrf_failed"
    logout = await harness.client.post(
        "/auth/logout",
        content=b"{}",
        headers={
            **COOKIE,
            **JSON,
            **cookie_header(login, "/auth/logout"),
            "X-CSRF-Token": csrf_of(login),
            **headers,
        },
    )
    assert logout.status_code == 403
    assert logout.json()["error"]["code"] == "csrf_failed"
    foreign_login = await harness.client.post(
        "/auth/login",
        json={"email": "x@example.com", "password": PASSWORD},
        headers={**COOKIE, **headers},
    )
    assert foreign_login.status_code in {403, 422}
    assert (await cookie_refresh(harness, login)).status_code == 200


async def test_e34_same_origin_and_allowed_origins_pass(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url, cors_origins=[ALLOWED_ORIGIN])):
        email = await h.create_user()
        login = await cookie_login(
            h, email, Origin=ALLOWED_ORIGIN, **{"Sec-Fetch-Site": "cross-site"}
        )
        same = await cookie_refresh(h, login, Origin="http://testserver")
        assert same.status_code == 200, same.text
        allowed = await cookie_refresh(
            h, same, Origin=ALLOWED_ORIGIN, **{"Sec-Fetch-Site": "cross-site"}
        )
        assert allowed.status_code == 200, allowed.text


async def test_e35_cookie_without_authorization_is_csrf_checked_on_logout(
    harness: Harness,
) -> None:
    login = await cookie_login(harness, await harness.create_user())
    base = {**COOKIE, **JSON, **cookie_header(login, "/auth/logout")}
    refused = await harness.client.post("/auth/logout", content=b"{}", headers=base)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "csrf_failed"
    me = await harness.client.get("/auth/me", headers=bearer(login.json()["access_token"]))
    assert me.status_code == 200  # nothing was revoked
    done = await harness.client.post(
        "/auth/logout", content=b"{}", headers={**base, "X-CSRF-Token": csrf_of(login)}
    )
    assert done.status_code == 204
    assert "clear-site-data" not in done.headers
    me = await harness.client.get("/auth/me", headers=bearer(login.json()["access_token"]))
    assert me.json()["error"]["code"] == "session_revoked"


async def test_refresh_cookie_is_not_sent_elsewhere(harness: Harness) -> None:
    login = await cookie_login(harness, await harness.create_user())
    assert REFRESH_COOKIE not in cookie_header(login, "/auth/me")["cookie"]
    assert REFRESH_COOKIE not in cookie_header(login, "/auth/session-status")["cookie"]


async def test_cors_credentials_only_for_configured_origins(database_url: str) -> None:
    async for h in start_harness(make_settings(database_url, cors_origins=[ALLOWED_ORIGIN])):
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,session-transport,x-csrf-token",
        }
        ok = await h.client.options(
            "/auth/refresh", headers={"Origin": ALLOWED_ORIGIN, **preflight}
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        assert ok.headers["access-control-allow-credentials"] == "true"
        evil = await h.client.options(
            "/auth/refresh", headers={"Origin": "https://evil.example", **preflight}
        )
        assert "access-control-allow-origin" not in evil.headers


def test_wildcard_cors_with_credentials_is_refused() -> None:
    with pytest.raises(ValueError, match="CORS_ORIGINS"):
        make_settings("sqlite+aiosqlite:///x.db", cors_origins=["*"])


async def test_an_unrelated_authorization_header_does_not_skip_the_checks(
    harness: Harness,
) -> None:
    login = await cookie_login(harness, await harness.create_user())
    response = await harness.client.post(
        "/auth/logout",
        content=b"x=1",
        headers={
            **cookie_header(login, "/auth/logout"),
            "content-type": "application/x-www-form-urlencoded",
            "Authorization": "Basic YWJjOmRlZg==",
            "X-CSRF-Token": csrf_of(login),
        },
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"


async def test_logout_sends_clear_site_data_only_when_configured(database_url: str) -> None:
    settings = make_settings(database_url, logout_clear_site_data=True)
    async for h in start_harness(settings):
        login = await cookie_login(h, await h.create_user())
        access = login.json()["access_token"]
        response = await h.client.post("/auth/logout", headers={**COOKIE, **JSON, **bearer(access)})
        assert response.status_code == 204
        assert response.headers["clear-site-data"] == '"cookies"'
        assert {c["name"] for c in set_cookies(response)} == {REFRESH_COOKIE, CSRF_COOKIE}
