"""DPoP in a real browser (issue 18): auth-client.js with `dpop: true` in Debian's Chromium.

The client's key is a non-extractable WebCrypto P-256 key kept in IndexedDB. These tests check
what only a browser can show: script cannot export the key; it survives a reload; three tabs
starting together share one key and one bound session without a reuse detection; a copied
cookie jar cannot refresh without the key, and its attempts do not log the owner out.

The page is a few lines that import /static/auth-client.js; Playwright answers its navigation
(on the service's own origin, so cookies, IndexedDB and the module are the service's), and
every other request reaches the real uvicorn server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from app.audit.models import AuditEvent
from app.core import migrate
from app.core.db import create_engine, table_of
from app.sessions.models import Session
from app.users.models import User
from tests.browser.conftest import REQUIRE_BROWSER
from tests.conftest import PASSWORD
from tests.downstream.issuer import CLIENT_ID
from tests.support.servers import (
    AUDIENCE,
    create_user_in,
    free_port,
    started_together,
    uvicorn_server,
)

try:
    from playwright.async_api import (
        Browser,
        BrowserContext,
        Page,
        Request,
        Response,
        Route,
        WebSocket,
    )
except ImportError:  # pragma: no cover - the dev dependency is missing
    if REQUIRE_BROWSER:
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow

PAGE_PATH = "/dpop-test-page"
# The client in DPoP mode (options from the query string), and what the tests read back.
# `booted` is set once the page-load refresh has settled.
CLIENT_SETUP = """
const query = new URLSearchParams(location.search);
const ends = [];
const dpop = query.get("dpop") === "0" ? false : {
  newKeyAfterLogout: query.get("newKeyAfterLogout") === "1",
};
const client = createAuthClient({ dpop, onSessionEnd: ({ reason }) => ends.push(reason) });
window.dpopPage = { client, ends, booted: false };
client.ready.then(() => { window.dpopPage.booted = true; });
"""
PAGE = f"""<!doctype html><meta charset="utf-8"><title>dpop</title>
<script type="module">
import {{ createAuthClient }} from "/static/auth-client.js";
{CLIENT_SETUP}
</script>"""
# The same client in a document the service itself served (its JSON /healthz): Chromium's
# Local Network Access checks let only such a page open a WebSocket to another local port
# (a page fulfilled by Playwright has no address, and its sockets to localhost are blocked).
LOCAL_PAGE_PATH = "/healthz"
LOCAL_BOOT = f"""if (location.pathname === "{LOCAL_PAGE_PATH}") {{
  import("/static/auth-client.js").then(({{ createAuthClient }}) => {{ {CLIENT_SETUP} }});
}}"""

# What a script on the page (an XSS payload, say) can do with the stored key: read the record
# and ask WebCrypto to export the private key in both formats that could carry it.
EXPORT_ATTEMPT = """async () => {
    const db = await new Promise((resolve, reject) => {
        const request = indexedDB.open("authsvc-dpop");
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => reject(request.error);
    });
    const read = (method) => new Promise((resolve, reject) => {
        const request = db.transaction("keys").objectStore("keys")[method]();
        request.onsuccess = () => resolve(request.result);
        request.onerror = () => reject(request.error);
    });
    const names = await read("getAllKeys");
    const records = await read("getAll");
    db.close();
    const attempt = async (format, key) => {
        try { await crypto.subtle.exportKey(format, key); return "exported"; }
        catch (error) { return error.name; }
    };
    const keys = [];
    for (const record of records) {
        const key = record.privateKey;
        keys.push({
            isCryptoKey: key instanceof CryptoKey,
            type: key.type,
            extractable: key.extractable,
            algorithm: key.algorithm,
            usages: key.usages,
            pkcs8: await attempt("pkcs8", key),
            jwk: await attempt("jwk", key),
            publicJwk: await crypto.subtle.exportKey("jwk", record.publicKey),
        });
    }
    return { names, keys };
}"""


# ------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Service:
    base: str  # http://localhost:<port>
    database_url: str


@contextlib.asynccontextmanager
async def _serve(database_url: str, env: dict[str, str]) -> AsyncIterator[Service]:
    server = uvicorn_server(database_url, env=env)
    base, _ = await asyncio.to_thread(server.__enter__)
    try:
        yield Service(base=base.replace("127.0.0.1", "localhost"), database_url=database_url)
    finally:
        await asyncio.to_thread(server.__exit__, None, None, None)


async def _sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('dpop-browser') / 'auth.db'}"
    await asyncio.to_thread(migrate.upgrade, url)
    return url


@pytest.fixture(scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    async with _serve(await _sqlite_database(tmp_path_factory), {}) as svc:
        yield svc


@pytest.fixture(scope="module")
async def pg_service(postgres_url: str) -> AsyncIterator[Service]:
    """For the tabs that race: PostgreSQL's row locks, as in production."""
    async with _serve(postgres_url, {}) as svc:
        yield svc


@pytest.fixture(scope="module")
async def nonce_service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    env = {"DPOP_NONCE_REQUIRED": "true"}
    async with _serve(await _sqlite_database(tmp_path_factory), env) as svc:
        yield svc


@dataclass(frozen=True)
class Notes:
    auth: Service  # the page's origin
    ws: str  # the notes service's feed (authsvc-kit), ws://localhost:<port>/ws


@pytest.fixture(scope="module")
async def notes(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Notes]:
    """The auth service (its own issuer, so the kit can fetch its keys) and the notes service
    of examples/notes, which checks tokens with authsvc-kit."""
    database_url = await _sqlite_database(tmp_path_factory)
    auth_port, notes_port = free_port(), free_port()
    auth = f"http://127.0.0.1:{auth_port}"
    notes_env = {
        "AUTHSVC_ISSUER": auth,
        "AUTHSVC_AUDIENCE": AUDIENCE,
        "NOTES_CLIENT_ID": CLIENT_ID,
    }
    servers = started_together(
        uvicorn_server(database_url, env={"JWT_ISSUER": auth}, port=auth_port),
        uvicorn_server(
            "sqlite+aiosqlite:///:memory:",  # unused: the notes service has no database
            factory="examples.notes.app:app",
            is_factory=False,
            env=notes_env,
            port=notes_port,
        ),
    )
    await asyncio.to_thread(servers.__enter__)
    try:
        yield Notes(
            auth=Service(base=f"http://localhost:{auth_port}", database_url=database_url),
            ws=f"ws://localhost:{notes_port}/ws",
        )
    finally:
        await asyncio.to_thread(servers.__exit__, None, None, None)


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await new_context(browser)
    yield ctx
    await ctx.close()


async def new_context(browser: Browser) -> BrowserContext:
    """A fresh profile (cookies, IndexedDB) that serves the test page on any origin."""
    ctx = await browser.new_context()
    ctx.set_default_timeout(10_000)

    async def page(route: Route) -> None:
        await route.fulfill(status=200, content_type="text/html; charset=utf-8", body=PAGE)

    await ctx.route(f"**{PAGE_PATH}*", page)
    await ctx.add_init_script(LOCAL_BOOT)
    return ctx


# -------------------------------------------------------------------------------- helpers


class PageWatch:
    """Uncaught errors of the pages: a test that ends with any of them fails."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def attach(self, page: Page) -> Page:
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: {error}"))
        return page


async def booted(page: Page) -> None:
    await page.wait_for_function("window.dpopPage && window.dpopPage.booted")


async def open_page(
    context: BrowserContext,
    service: Service,
    watch: PageWatch,
    query: str = "",
    path: str = PAGE_PATH,
) -> Page:
    page = watch.attach(await context.new_page())
    await page.goto(f"{service.base}{path}{query}")
    await booted(page)
    return page


async def login(page: Page, email: str) -> dict[str, Any]:
    session = await page.evaluate(
        "([email, password]) => window.dpopPage.client.login(email, password, 'laptop')",
        [email, PASSWORD],
    )
    assert isinstance(session, dict), session
    return session


async def access_token(page: Page) -> str | None:
    value = await page.evaluate("window.dpopPage.client.accessToken()")
    assert value is None or isinstance(value, str)
    return value


def claims_of(token: str | None) -> dict[str, Any]:
    assert token, "the page holds no access token"
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def jkt_of(token: str | None) -> str:
    jkt = claims_of(token).get("cnf", {}).get("jkt")
    assert isinstance(jkt, str), "the access token is not bound to a DPoP key"
    return jkt


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638, computed here independently of the client and of app.dpop."""
    members = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return b64(hashlib.sha256(canonical.encode()).digest())


async def session_ends(page: Page) -> list[str]:
    ends = await page.evaluate("window.dpopPage.ends")
    assert isinstance(ends, list)
    return [str(reason) for reason in ends]


async def fetch_me(page: Page, path: str = "/auth/me") -> tuple[int, Any]:
    result = await page.evaluate(
        """async (path) => {
            const response = await window.dpopPage.client.fetch(path);
            return [response.status, await response.json()];
        }""",
        path,
    )
    assert isinstance(result, list)
    return int(result[0]), result[1]


@dataclass
class Records:
    sessions: list[Any]
    events: list[str]


async def records_of(database_url: str, email: str) -> Records:
    users_t, sessions_t, events_t = table_of(User), table_of(Session), table_of(AuditEvent)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            user_id = (
                await conn.execute(select(users_t.c.id).where(users_t.c.email == email))
            ).scalar_one()
            sessions = list(
                await conn.execute(select(sessions_t).where(sessions_t.c.user_id == user_id))
            )
            events = list(
                await conn.execute(
                    select(events_t.c.event)
                    .where(events_t.c.user_id == user_id)
                    .order_by(events_t.c.id)
                )
            )
    finally:
        await engine.dispose()
    return Records(sessions=sessions, events=[e.event for e in events])


def foreign_proof(url: str, method: str = "POST") -> str:
    """A well-formed proof for this request, signed by a key that is not the browser's."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    claims = {"jti": uuid.uuid4().hex, "htm": method, "htu": url, "iat": int(time.time())}
    return jwt.encode(claims, key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": jwk})


async def raw_refresh(context: BrowserContext, service: Service, proof: str | None) -> Any:
    """POST /auth/refresh with the context's cookie jar, as the client sends it, but with the
    given proof (or none) instead of the client's."""
    csrf = next(
        (c.get("value") for c in await context.cookies() if c.get("name") == "__Host-csrf_token"),
        None,
    )
    assert csrf, "the cookie jar holds no session"
    headers = {
        "Content-Type": "application/json",
        "Session-Transport": "cookie",
        "X-CSRF-Token": str(csrf),
    }
    if proof is not None:
        headers["DPoP"] = proof
    return await context.request.post(f"{service.base}/auth/refresh", headers=headers, data="{}")


def proofs_sent(page: Page) -> list[tuple[str, dict[str, str]]]:
    """From now on, every request the page sends to /auth/ or /api/: URL and headers."""
    sent: list[tuple[str, dict[str, str]]] = []

    def record(request: Request) -> None:
        if "/auth/" in request.url:
            sent.append((request.url, dict(request.headers)))

    page.on("request", record)
    return sent


# ---------------------------------------------------------------------------------- tests


async def test_the_key_is_not_exportable(context: BrowserContext, service: Service) -> None:
    """The stored private key is a CryptoKey that WebCrypto refuses to export (pkcs8 and jwk
    alike), and it is the key the session is bound to."""
    watch = PageWatch()
    email = await create_user_in(service.database_url, prefix="dpop")
    page = await open_page(context, service, watch)
    await login(page, email)
    token = await access_token(page)

    found = await page.evaluate(EXPORT_ATTEMPT)
    assert found["names"] == [f"authsvc:{service.base}/"], found["names"]
    [key] = found["keys"]
    assert key["isCryptoKey"] is True
    assert key["type"] == "private"
    assert key["extractable"] is False
    assert key["algorithm"] == {"name": "ECDSA", "namedCurve": "P-256"}
    assert key["usages"] == ["sign"]
    assert key["pkcs8"] == "InvalidAccessError"
    assert key["jwk"] == "InvalidAccessError"
    assert "d" not in key["publicJwk"]
    assert jkt_of(token) == thumbprint(key["publicJwk"])
    assert await page.evaluate("window.dpopPage.client.dpopThumbprint()") == jkt_of(token)
    assert watch.errors == []


async def test_the_fetch_wrapper_sends_a_dpop_proof(
    context: BrowserContext, service: Service
) -> None:
    """auth.fetch() presents a bound token as `Authorization: DPoP` with a proof for this very
    request (RFC 9449 §4.2: htu without query or fragment, ath of the token), signed by the
    key in the proof's public jwk; the server accepts it."""
    watch = PageWatch()
    email = await create_user_in(service.database_url, prefix="dpop")
    page = await open_page(context, service, watch)
    sent = proofs_sent(page)
    body = await page.evaluate(
        "([e, p]) => window.dpopPage.client.login(e, p).then(() => null)", [email, PASSWORD]
    )
    assert body is None
    token = await access_token(page)
    assert token
    status, me = await fetch_me(page, "/auth/me?probe=1#part")
    assert (status, me.get("email")) == (200, email), me

    [(login_url, login_headers)] = [(u, h) for u, h in sent if u.endswith("/auth/login")]
    [(me_url, me_headers)] = [(u, h) for u, h in sent if "/auth/me" in u]
    assert me_headers["authorization"] == f"DPoP {token}"
    for url, headers, method in ((login_url, login_headers, "POST"), (me_url, me_headers, "GET")):
        proof = headers["dpop"]
        header = jwt.get_unverified_header(proof)
        assert header["typ"] == "dpop+jwt"
        assert header["alg"] == "ES256"
        assert sorted(header["jwk"]) == ["crv", "kty", "x", "y"]  # the public key only
        key = jwt.PyJWK(header["jwk"], algorithm="ES256")
        claims = jwt.decode(proof, key=key, algorithms=["ES256"])  # the signature holds
        assert claims["htm"] == method
        assert claims["htu"] == url.split("?")[0].split("#")[0]
        assert abs(claims["iat"] - time.time()) < 30
        assert len(claims["jti"]) >= 16
        assert thumbprint(header["jwk"]) == jkt_of(token)
    me_claims = jwt.decode(me_headers["dpop"], options={"verify_signature": False})
    assert me_claims["htu"] == f"{service.base}/auth/me"
    assert me_claims["ath"] == b64(hashlib.sha256(token.encode()).digest())
    assert "ath" not in jwt.decode(login_headers["dpop"], options={"verify_signature": False})
    assert watch.errors == []


async def test_the_key_survives_a_reload(context: BrowserContext, service: Service) -> None:
    """After a reload the page refreshes with the same key: a new access token, the same
    session, the same cnf.jkt; the session row is bound to it."""
    watch = PageWatch()
    email = await create_user_in(service.database_url, prefix="dpop")
    page = await open_page(context, service, watch)
    session = await login(page, email)
    before = await access_token(page)
    jkt = jkt_of(before)

    for _ in range(2):
        await page.reload()
        await booted(page)
        after = await access_token(page)
        assert after not in (None, before), "the reload should have refreshed"
        assert jkt_of(after) == jkt
        assert claims_of(after)["sid"] == session["id"]
        status, _ = await fetch_me(page)
        assert status == 200
        before = after

    records = await records_of(service.database_url, email)
    assert [(str(s.id), s.dpop_jkt, s.revoked_at) for s in records.sessions] == [
        (session["id"], jkt, None)
    ]
    assert records.events.count("refresh.rotated") == 2
    assert "refresh.dpop_refused" not in records.events
    assert await session_ends(page) == []
    assert watch.errors == []


@pytest.mark.parametrize("web_locks", [True, False], ids=["web-locks", "broadcast-fallback"])
async def test_three_tabs_share_one_bound_session_postgres(
    context: BrowserContext, pg_service: Service, web_locks: bool
) -> None:
    """Three tabs that load (and reload) together refresh one at a time with the one stored
    key: one session, one key, never a reuse detection nor a refused proof; each tab's
    fetch() is accepted. Also without Web Locks, where the tabs' announcements can cross and
    two refreshes of one token reach the server (its retry answer must hold for a bound
    session too)."""
    if not web_locks:
        await context.add_init_script(
            "Object.defineProperty(Navigator.prototype, 'locks', {get: () => undefined})"
        )
    watch = PageWatch()
    email = await create_user_in(pg_service.database_url, prefix="dpop")
    first = await open_page(context, pg_service, watch)
    session = await login(first, email)
    jkt = jkt_of(await access_token(first))
    await first.close()

    tabs = [watch.attach(await context.new_page()) for _ in range(3)]
    for _ in range(3):  # open together, then reload together, twice
        await asyncio.gather(*(tab.goto(f"{pg_service.base}{PAGE_PATH}") for tab in tabs))
        await asyncio.gather(*(booted(tab) for tab in tabs))
        for tab in tabs:
            token = await access_token(tab)
            assert claims_of(token)["sid"] == session["id"]
            assert jkt_of(token) == jkt
    answers = await asyncio.gather(*(fetch_me(tab) for tab in tabs))
    assert [(status, me.get("email")) for status, me in answers] == [(200, email)] * 3

    records = await records_of(pg_service.database_url, email)
    assert "refresh.reuse_detected" not in records.events, records.events
    assert "refresh.dpop_refused" not in records.events, records.events
    if web_locks:  # single flight held: the server never even saw a retry
        assert "refresh.retried" not in records.events, records.events
    assert await tabs[0].evaluate("!!navigator.locks") is web_locks
    assert records.events.count("login.succeeded") == 1
    assert [(str(s.id), s.dpop_jkt, s.revoked_at) for s in records.sessions] == [
        (session["id"], jkt, None)
    ]
    for tab in tabs:
        assert await session_ends(tab) == []
    assert watch.errors == []


async def test_a_stolen_cookie_jar_cannot_refresh(
    browser: Browser, context: BrowserContext, service: Service
) -> None:
    """The refresh cookie of a bound session is useless without the browser's key: in a
    fresh profile holding a copy of the cookies (the client's own refresh, with that profile's
    new key; a request without a proof; one with a proof by another key), and even from the
    owner's own profile without the key's proof: 400 invalid_dpop_proof each time, nothing
    rotated, and the owner's page refreshes and works afterwards (not logged out)."""
    watch = PageWatch()
    email = await create_user_in(service.database_url, prefix="dpop")
    owner = await open_page(context, service, watch)
    session = await login(owner, email)
    jkt = jkt_of(await access_token(owner))
    refresh_url = f"{service.base}/auth/refresh"

    thief = await new_context(browser)
    try:
        await thief.add_cookies(await context.cookies())  # type: ignore[arg-type]
        for proof in (None, foreign_proof(refresh_url)):
            response = await raw_refresh(thief, service, proof)
            assert response.status == 400, await response.text()
            assert (await response.json())["error"]["code"] == "invalid_dpop_proof"
        # The client itself in the thief's profile: its page-load refresh signs with a key
        # of its own, which the session does not know.
        stolen = await open_page(thief, service, watch)
        assert await access_token(stolen) is None
        assert await session_ends(stolen) == ["invalid_dpop_proof"]
        assert await stolen.evaluate("window.dpopPage.client.dpopThumbprint()") != jkt
    finally:
        await thief.close()
    # The owner's own jar without the owner's proof (a script that reads no key) fails too.
    for proof in (None, foreign_proof(refresh_url)):
        response = await raw_refresh(context, service, proof)
        assert response.status == 400, await response.text()
        assert (await response.json())["error"]["code"] == "invalid_dpop_proof"

    refused = await records_of(service.database_url, email)
    assert refused.events.count("refresh.dpop_refused") == 5
    assert "refresh.rotated" not in refused.events  # nothing rotated
    # The owner carries on: a refresh with the key, then a call with the new token.
    previous = await access_token(owner)
    await owner.evaluate("window.dpopPage.client.refresh()")
    renewed = await access_token(owner)
    assert renewed not in (None, previous)
    assert jkt_of(renewed) == jkt
    status, me = await fetch_me(owner)
    assert (status, me.get("email")) == (200, email)
    assert await session_ends(owner) == []

    records = await records_of(service.database_url, email)
    assert "refresh.reuse_detected" not in records.events, records.events
    assert records.events.count("refresh.rotated") == 1
    assert [(str(s.id), s.revoked_at) for s in records.sessions] == [(session["id"], None)]
    assert watch.errors == []


async def test_logout_keeps_the_key_unless_asked(context: BrowserContext, service: Service) -> None:
    """The key belongs to the browser: logout (with the bound token) ends the session, the
    next login binds the new session to the same key. With newKeyAfterLogout the next login
    uses a new key."""
    watch = PageWatch()
    email = await create_user_in(service.database_url, prefix="dpop")
    page = await open_page(context, service, watch)
    await login(page, email)
    first = jkt_of(await access_token(page))
    # status() and logout() present the bound token too (logout would fall back to the
    # cookie after a refusal: the one answer shows it did not need to).
    answers: list[tuple[str, int, str]] = []

    def record(response: Response) -> None:
        if "/auth/" in response.url:
            scheme = (response.request.headers.get("authorization") or "none").split()[0]
            answers.append((response.url.rsplit("/", 1)[-1], response.status, scheme))

    page.on("response", record)
    assert await page.evaluate("window.dpopPage.client.status().then((body) => !!body)")
    await page.evaluate("window.dpopPage.client.logout()")
    assert answers == [("session-status", 200, "DPoP"), ("logout", 204, "DPoP")], answers
    assert await session_ends(page) == ["logged_out"]
    await login(page, email)
    assert jkt_of(await access_token(page)) == first

    renewing = await open_page(context, service, watch, "?newKeyAfterLogout=1")
    await renewing.evaluate("window.dpopPage.client.logout()")
    await login(renewing, email)
    second = jkt_of(await access_token(renewing))
    assert second != first
    records = await records_of(service.database_url, email)
    assert [s.revoke_reason for s in records.sessions].count("logout") == 2
    assert sorted(s.dpop_jkt for s in records.sessions) == sorted([first, first, second])
    assert watch.errors == []


async def test_nonces_are_fetched_once_and_reused(
    context: BrowserContext, nonce_service: Service
) -> None:
    """DPOP_NONCE_REQUIRED: the login's first proof is answered use_dpop_nonce with a nonce,
    the client retries once with it; then it keeps the newest nonce the server sends, so the
    refresh and the API calls that follow succeed at the first try."""
    watch = PageWatch()
    email = await create_user_in(nonce_service.database_url, prefix="dpop")
    page = await open_page(context, nonce_service, watch)
    answers: list[tuple[str, int]] = []
    page.on("response", lambda r: answers.append((r.url.split("/auth/")[-1], r.status)))
    sent = proofs_sent(page)
    await login(page, email)
    await page.evaluate("window.dpopPage.client.refresh()")
    for _ in range(2):
        status, me = await fetch_me(page)
        assert (status, me.get("email")) == (200, email), me

    auth_answers = [a for a in answers if not a[0].startswith("http")]
    assert auth_answers == [("login", 400), ("login", 200), ("refresh", 200), ("me", 200)] + [
        ("me", 200)
    ], auth_answers
    proofs = [jwt.decode(h["dpop"], options={"verify_signature": False}) for _, h in sent]
    assert "nonce" not in proofs[0]
    assert all(isinstance(p.get("nonce"), str) for p in proofs[1:]), proofs
    assert watch.errors == []


OPEN_FEED = """(address) => {
    window.feed = { messages: [], closes: [] };
    window.feed.socket = window.dpopPage.client.socket(address, {
        onMessage: (message) => { window.feed.messages.push(message); },
        onClose: (close) => { window.feed.closes.push(close); },
    });
}"""


async def test_a_socket_presents_a_bound_token_with_proofs(
    context: BrowserContext, notes: Notes
) -> None:
    """socket() to a service on authsvc-kit: the bound token's authenticate messages carry a
    proof (GET, the socket's URL as http, ath of that token), first and at a renewal; the
    service lets the socket in and renews it in band (the kit closes 4400 without a proof)."""
    watch = PageWatch()
    email = await create_user_in(notes.auth.database_url, prefix="dpop")
    page = await open_page(context, notes.auth, watch, path=LOCAL_PAGE_PATH)
    sent: list[str] = []

    def on_socket(socket: WebSocket) -> None:
        socket.on("framesent", lambda payload: sent.append(str(payload)))

    page.on("websocket", on_socket)
    await login(page, email)
    first = await access_token(page)
    await page.evaluate(OPEN_FEED, notes.ws)
    hello = await page.wait_for_function(
        "window.feed.messages.find((m) => m.type === 'hello') || window.feed.closes[0]"
    )
    assert (await hello.json_value()).get("type") == "hello"

    # A renewal must expire later (whole seconds): refresh in the next second.
    await asyncio.sleep(max(0.0, claims_of(first)["iat"] + 1.05 - time.time()))
    await page.evaluate("window.dpopPage.client.refresh()")
    renewed = await access_token(page)
    assert renewed not in (None, first)
    await page.wait_for_function("window.feed.closes.length || window.feed.socket.renewals")

    authenticates = [json.loads(f) for f in sent if '"authenticate"' in f]
    assert [m["token"] for m in authenticates] == [first, renewed]
    for message in authenticates:
        claims = jwt.decode(message["proof"], options={"verify_signature": False})
        assert claims["htm"] == "GET"
        assert claims["htu"] == notes.ws.replace("ws://", "http://")
        assert claims["ath"] == b64(hashlib.sha256(message["token"].encode()).digest())
        assert thumbprint(jwt.get_unverified_header(message["proof"])["jwk"]) == jkt_of(first)
    assert await page.evaluate("window.feed.closes") == []
    assert watch.errors == []


@pytest.mark.parametrize("off_by", [600, -600], ids=["ahead", "behind"])
async def test_a_wrong_clock_costs_one_round_trip(
    context: BrowserContext, service: Service, off_by: int
) -> None:
    """A browser whose clock is 10 minutes off signs proofs the service refuses (iat outside
    its window); the refusal's Date header gives the client the service's time, the proof is
    signed again with it and accepted. Later requests use it at once; a reloaded page learns it
    again from its first refresh."""
    watch = PageWatch()
    email = await create_user_in(service.database_url, prefix="dpop")
    await context.clock.install(time=time.time() + off_by)
    page = await open_page(context, service, watch)
    answers: list[tuple[str, int]] = []

    def record(response: Response) -> None:
        if "/auth/" in response.url:
            answers.append((response.url.rsplit("/", 1)[-1], response.status))

    page.on("response", record)
    await login(page, email)
    status, _ = await fetch_me(page)
    assert status == 200
    await page.reload()
    await booted(page)
    status, _ = await fetch_me(page)
    assert status == 200
    assert answers == [
        ("login", 400),
        ("login", 200),
        ("me", 200),
        ("refresh", 400),
        ("refresh", 200),
        ("me", 200),
    ], answers
    assert await session_ends(page) == []
    assert watch.errors == []
