"""Passkeys in Debian's Chromium with a virtual authenticator (the DevTools WebAuthn domain,
through Playwright's CDP session), against the real service, with the npm package's
registerPasskey, loginWithPasskey, loginMfa(challenge, {passkey}) and stepUp({passkey}):
register, passwordless login, a password login's second step, and a cloned authenticator (its
signature counter behind the service's) refused."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.browser.conftest import REQUIRE_BROWSER
from tests.browser.test_browser import (
    BASE_ENV,
    PageWatch,
    Service,
    _serve,
    _sqlite_database,
    records_of,
)
from tests.conftest import PASSWORD
from tests.support.servers import create_user_in, free_port

try:
    from playwright.async_api import BrowserContext, CDPSession, Page, Route
except ImportError:  # pragma: no cover - the dev dependency is missing
    if REQUIRE_BROWSER:
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow

PAGE_PATH = "/passkeys-test-page"
PAGE = """<!doctype html><meta charset="utf-8"><title>passkeys</title>
<script type="module">
import { createAuthClient } from "/static/auth-client.js";
const b64 = (part) => part.replace(/-/g, "+").replace(/_/g, "/");
window.make = () => {
  const auth = createAuthClient();
  const claims = () => JSON.parse(atob(b64(auth.accessToken().split(".")[1])));
  async function attempt(fn) {
    try { return { ok: await fn() }; }
    catch (e) { return { code: e.code ?? e.name, status: e.status, detail: e.detail ?? null }; }
  }
  return { auth, claims, attempt };
};
window.pk = window.make();
</script>"""


@pytest.fixture(scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    """The service on localhost, its WebAuthn RP ID and origin this page's."""
    port = free_port()
    origin = f"http://localhost:{port}"
    env = {**BASE_ENV, "WEBAUTHN_RP_ID": "localhost", "WEBAUTHN_ORIGINS": f'["{origin}"]'}
    async with _serve(await _sqlite_database(tmp_path_factory), env, port) as svc:
        assert svc.base == origin
        yield svc


async def _page(context: BrowserContext, base: str, watch: PageWatch) -> Page:
    async def fulfil(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=PAGE)

    await context.route(f"{base}{PAGE_PATH}", fulfil)
    page = watch.attach(await context.new_page())
    await page.goto(f"{base}{PAGE_PATH}")
    await page.wait_for_function("window.pk !== undefined")
    await page.evaluate("window.pk.auth.ready")
    return page


async def _authenticator(page: Page, context: BrowserContext) -> tuple[CDPSession, str]:
    cdp = await context.new_cdp_session(page)
    await cdp.send("WebAuthn.enable")
    added = await cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    return cdp, str(added["authenticatorId"])


async def _run(page: Page, script: str, *args: Any) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(
        f"(args) => window.pk.attempt(() => ({script})(window.pk.auth, ...args))", list(args)
    )
    return result


async def test_passkeys_in_chromium(context: BrowserContext, service: Service) -> None:
    base, database_url = service.base, service.database_url
    email = await create_user_in(database_url, prefix="passkey")
    watch = PageWatch()
    page = await _page(context, base, watch)
    cdp, authenticator = await _authenticator(page, context)

    # Register, from a password session.
    assert "ok" in await _run(page, "(a, e, p) => a.login(e, p)", email, PASSWORD)
    registered = await _run(
        page, "(a, p) => a.registerPasskey({ password: p, name: 'virtual' })", PASSWORD
    )
    assert registered["ok"]["name"] == "virtual", registered
    assert "ok" in await _run(page, "(a) => a.logout()")

    # Passwordless.
    passwordless = await _run(page, "(a) => a.loginWithPasskey({ deviceName: 'chromium' })")
    assert "ok" in passwordless, passwordless
    claims = await page.evaluate("window.pk.claims()")
    assert claims["amr"][1:] == ["user", "mfa"]
    assert claims["acr"] == "mfa"

    # Step-up with the passkey.
    stepped = await _run(page, "(a) => a.stepUp({ passkey: true })")
    assert stepped["ok"]["acr"] == "mfa", stepped
    assert "ok" in await _run(page, "(a) => a.logout()")

    # The password now buys a challenge, answered with the passkey.
    first = await _run(page, "(a, e, p) => a.login(e, p)", email, PASSWORD)
    assert first["code"] == "mfa_required", first
    assert first["detail"]["methods"] == ["passkey"]
    second = await _run(
        page, "(a, c) => a.loginMfa(c, { passkey: true })", first["detail"]["challenge"]
    )
    assert "ok" in second, second
    assert (await page.evaluate("window.pk.claims()"))["amr"][0] == "pwd"
    assert "ok" in await _run(page, "(a) => a.logout()")

    # A clone: the same credential, its counter behind the service's.
    credentials = await cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})
    credential = credentials["credentials"][0]
    assert credential["signCount"] >= 3
    await cdp.send("WebAuthn.removeVirtualAuthenticator", {"authenticatorId": authenticator})
    clone_page = await _page(context, base, watch)
    clone_cdp, clone = await _authenticator(clone_page, context)
    await clone_cdp.send(
        "WebAuthn.addCredential",
        {"authenticatorId": clone, "credential": {**credential, "signCount": 1}},
    )
    cloned = await _run(clone_page, "(a) => a.loginWithPasskey()")
    assert cloned.get("code") == "invalid_credentials", cloned
    events = [e.event for e in (await records_of(database_url, email)).events]
    assert "passkey.clone_suspected" in events  # refused for its counter, nothing else
    assert watch.errors == []
