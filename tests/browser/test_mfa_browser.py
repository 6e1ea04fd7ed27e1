"""The npm package's two-step login and step-up (auth-client.js: login's "mfa_required",
loginMfa, stepUp) in Debian's Chromium against the real service, cookie transport: the account's
authenticator app is enrolled over HTTP first, with codes computed from the real clock."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pyotp
import pytest

from tests.browser.conftest import REQUIRE_BROWSER
from tests.browser.test_browser import BASE_ENV, PageWatch, Service, _serve, _sqlite_database
from tests.conftest import PASSWORD
from tests.support.servers import create_user_in

try:
    from playwright.async_api import BrowserContext, Route
except ImportError:  # pragma: no cover - the dev dependency is missing
    if REQUIRE_BROWSER:
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow

PAGE_PATH = "/mfa-test-page"
PAGE = """<!doctype html><meta charset="utf-8"><title>mfa</title>
<script type="module">
import { createAuthClient } from "/static/auth-client.js";
const auth = createAuthClient();
const b64 = (part) => part.replace(/-/g, "+").replace(/_/g, "/");
const claims = () => JSON.parse(atob(b64(auth.accessToken().split(".")[1])));
async function attempt(fn) {
  try { return { ok: await fn() }; }
  catch (e) { return { code: e.code, status: e.status, detail: e.detail ?? null }; }
}
window.mfa = { auth, claims, attempt, ready: auth.ready };
</script>"""


@pytest.fixture(scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    async with _serve(await _sqlite_database(tmp_path_factory), BASE_ENV) as svc:
        yield svc


async def _enrolled(service: Service) -> tuple[str, str, list[str]]:
    """A new account with a confirmed authenticator app: (email, secret, recovery codes)."""
    email = await create_user_in(service.database_url, prefix="mfa")
    async with httpx.AsyncClient(base_url=service.base) as client:
        login = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        began = await client.post("/auth/mfa/totp", json={"password": PASSWORD}, headers=headers)
        secret = began.json()["secret"]
        confirmed = await client.post(
            "/auth/mfa/totp/confirm", json={"code": pyotp.TOTP(secret).now()}, headers=headers
        )
        assert confirmed.status_code == 200, confirmed.text
    return email, secret, confirmed.json()["recovery_codes"]


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


async def test_two_step_login_and_step_up_in_chromium(
    context: BrowserContext, service: Service
) -> None:
    email, secret, recovery_codes = await _enrolled(service)

    async def fulfil(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=PAGE)

    await context.route(f"{service.base}{PAGE_PATH}", fulfil)
    watch = PageWatch()
    page = watch.attach(await context.new_page())
    await page.goto(f"{service.base}{PAGE_PATH}")
    await page.wait_for_function("window.mfa !== undefined")
    assert await page.evaluate("window.mfa.ready") is None  # no session yet

    first = await page.evaluate(
        "([email, password]) => window.mfa.attempt(() => window.mfa.auth.login(email, password))",
        [email, PASSWORD],
    )
    assert first["code"] == "mfa_required", first
    assert first["status"] == 202
    assert first["detail"]["methods"] == ["totp", "recovery_code"]
    assert await page.evaluate("window.mfa.auth.accessToken()") is None

    wrong = await page.evaluate(
        "(challenge) => window.mfa.attempt(() => window.mfa.auth.loginMfa(challenge, "
        "{ recoveryCode: 'aaaa-bbbb-cccc' }))",
        first["detail"]["challenge"],
    )
    assert wrong["code"] == "invalid_mfa_code", wrong
    second = await page.evaluate(
        "([challenge, code]) => window.mfa.attempt(() => window.mfa.auth.loginMfa(challenge, "
        "{ recoveryCode: code }))",
        [first["detail"]["challenge"], recovery_codes[0]],
    )
    assert "ok" in second, second
    logged_in = await page.evaluate("window.mfa.claims()")
    assert logged_in["amr"] == ["pwd", "otp", "mfa"]
    assert logged_in["acr"] == "mfa"

    # The next step's code: later than the one that confirmed the enrolment (a code works once).
    code = pyotp.TOTP(secret).at(time.time() + 30)
    before = await page.evaluate("window.mfa.auth.accessToken()")
    stepped = await page.evaluate(
        "(code) => window.mfa.attempt(() => window.mfa.auth.stepUp({ code }))", code
    )
    assert stepped["ok"]["acr"] == "mfa", stepped
    after = await page.evaluate("window.mfa.auth.accessToken()")
    assert after != before
    assert _claims(after)["sid"] == logged_in["sid"]
    status = await page.evaluate("window.mfa.auth.status()")
    assert status["session"]["acr"] == "mfa"
    again = await page.evaluate(
        "(code) => window.mfa.attempt(() => window.mfa.auth.stepUp({ code }))", code
    )
    assert again["code"] == "invalid_mfa_code", again  # used already
    # The session goes on as any other: a refresh keeps its context.
    refreshed = await page.evaluate("window.mfa.auth.refresh().then(() => window.mfa.claims())")
    assert refreshed["amr"] == ["pwd", "otp", "mfa"]
    assert watch.errors == []
