"""The real service plus two test pages, for `uvicorn tests.engines.page_app:create_app`.

The pages are this suite's, not the demo's: the scenarios drive the browser client
(/static/auth-client.js, as the service serves it) the same way in every engine, through one
small `window.harness` API, whatever the demo page looks like. Everything else is the service.

- /engines/tab: one tab of an application using the client. `?start_at=<epoch ms>` makes
  tabs that were opened one after another start their clients at the same instant (a WebDriver
  can only navigate one window at a time); `?nolocks` hides the Web Locks API and
  `?nochannel` BroadcastChannel, to run the client's fallbacks. `?manual` loads the page but
  starts the client only when the test calls `harness.startAt(<epoch ms>)`.
- /engines/blank: an empty page; opened on another origin it is the attacker's page.

ENGINES_CLIENT_FILE=<path> serves that file as /static/auth-client.js instead: how a mutant of
the client is run through the scenarios, to see that they fail (docs/engines.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from app.main import create_app as create_service

TAB = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>engine tab</title>
<link rel="icon" href="data:,"></head>
<body><div id="status">checking</div>
<script type="module">
const params = new URLSearchParams(location.search);
if (params.has("nolocks")) {
  Object.defineProperty(Navigator.prototype, "locks", {get: () => undefined});
}
if (params.has("nochannel")) window.BroadcastChannel = undefined;
const h = window.harness = {
  calls: [], errors: [], status: "checking", started: false,
  features: {locks: !!(navigator.locks && navigator.locks.request),
             channel: typeof BroadcastChannel === "function", secure: isSecureContext},
};
window.addEventListener("error", (e) => h.errors.push(String(e.message)));
window.addEventListener("unhandledrejection", (e) => h.errors.push(String(e.reason)));
const show = (text) => { h.status = text; document.getElementById("status").textContent = text; };
// Whichever callbacks this version of the client calls, each is recorded as it came.
const record = (name, reason) => {
  h.calls.push([name, reason]);
  if (reason) show(reason === "session_expired" ? "session expired"
                   : reason === "logged_out" ? "logged out" : `ended: ${reason}`);
};
h.ends = () => {
  const ends = h.calls.filter(([name]) => name === "onSessionEnd").map(([, r]) => r);
  if (ends.length) return ends;
  return h.calls.filter(([name]) => name === "onSessionExpired" || name === "onLogout")
    .map(([name]) => name === "onLogout" ? "logged_out" : "session_expired");
};
async function start() {
  const { createAuthClient } = await import("/static/auth-client.js");
  const client = createAuthClient({
    onSessionEnd: (info) => record("onSessionEnd", info && info.reason),
    onSessionExpired: () => record("onSessionExpired", "session_expired"),
    onLogout: () => record("onLogout", "logged_out"),
    onChange: (session) => { if (session && h.status !== "logged in") show("logged in"); },
  });
  h.client = client;
  h.sid = () => (client.session() || {}).id || null;
  h.token = () => client.accessToken();
  h.login = async (email, password) => {
    await client.login(email, password, "engine test");
    show("logged in");
    return h.sid();
  };
  h.me = async () => {
    try {
      const response = await client.fetch("/auth/me");
      const body = await response.json().catch(() => ({}));
      return {status: response.status, email: body.email || null,
              code: body.error ? body.error.code : null};
    } catch (error) {
      return {status: 0, email: null, code: String(error)};
    }
  };
  h.logout = () => client.logout();
  h.state = () => ({status: h.status, sid: h.sid(), token: h.token(), ends: h.ends(),
                    errors: h.errors, features: h.features, started: h.started});
  const session = await client.ready;
  show(session ? "logged in" : "logged out");
  h.started = true;
}
// The client starts at `at` (epoch ms): tabs loaded one after another start together.
h.startAt = (at) => setTimeout(() => start().catch((e) => h.errors.push(`start: ${e}`)),
                               Math.max(0, at - Date.now()));
if (!params.has("manual")) h.startAt(Number(params.get("start_at") || 0));
</script></body></html>
"""

BLANK = "<!doctype html><html><head><title>blank</title></head><body>nothing here</body></html>"
PAGES = {"/engines/tab": TAB, "/engines/blank": BLANK}
CLIENT = "/static/auth-client.js"


def _pages() -> dict[str, tuple[bytes, bytes]]:
    pages = {path: (html.encode(), b"text/html; charset=utf-8") for path, html in PAGES.items()}
    mutant = os.environ.get("ENGINES_CLIENT_FILE")
    if mutant:
        pages[CLIENT] = (Path(mutant).read_bytes(), b"text/javascript; charset=utf-8")
    return pages


def create_app() -> ASGIApp:
    service = create_service()
    pages = _pages()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        page = pages.get(scope.get("path", "")) if scope["type"] == "http" else None
        if page is None:
            await service(scope, receive, send)
            return
        body, content_type = page
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app
