/**
 * auth-client.js: the browser client for authsvc's cookie transport ("browser mode").
 *
 * An ES module with no build step and no dependencies. Serve it from the service
 * (`/static/auth-client.js`) and import it:
 *
 *     import { createAuthClient } from "/static/auth-client.js";
 *
 *     const auth = createAuthClient({
 *       baseUrl: "",                       // where authsvc lives; "" = this origin
 *       onSessionEnd: ({ reason }) => {},  // the session ended; reason says why (below)
 *       onChange: (session) => {},         // new tokens or deadlines, or null when logged out
 *     });
 *     const session = await auth.ready;    // after the silent refresh on page load
 *     if (!session) await auth.login(email, password, "laptop");
 *     const response = await auth.fetch("/auth/me");   // Bearer added, expiry handled
 *     await auth.logout();
 *
 * API of the returned object
 *   ready            Promise<session | null>, settled after the silent refresh on page load:
 *                    the session, or null when there is none (or the service could not be
 *                    reached yet: the client keeps retrying and reports success via onChange).
 *   login(email, password, deviceName?)  -> Promise<session>. Rejects with an AuthError whose
 *                    `code` is the service's error code (e.g. "invalid_credentials").
 *   logout()         -> Promise<void>. Revokes the session on the server, clears this tab and
 *                    every other tab of the same origin (onSessionEnd({reason: "logged_out"})).
 *   fetch(input, init)  -> Promise<Response>, like window.fetch plus `Authorization: Bearer`.
 *                    A token that is about to expire is refreshed first; a 401 `token_expired`
 *                    is refreshed once and retried. Relative string URLs starting with "/" are
 *                    resolved against baseUrl.
 *   status()         -> Promise<session-status body | null>. GET /auth/session-status with the
 *                    current token; never refreshes and is not activity (it does not slide the
 *                    session). null when there is no usable token.
 *   refresh()        -> Promise<session | null>. Force a silent refresh now.
 *   accessToken()    -> the current access token (string) or null. Held in memory only.
 *   session()        -> the last token response's `session` ({id, idle_expires_at,
 *                    absolute_expires_at}) plus `refresh_after` and `expires_at` of the
 *                    access token (ISO 8601, server time), or null.
 *   socket(url, {onOpen, onMessage, onClose})  -> a WebSocket to a service built with
 *                    authsvc-kit (see "WebSockets" below). Returns {send(data) -> boolean,
 *                    close(), state, connections, renewals}.
 *   close()          -> stop timers, cross-tab messages and sockets (for tests and single-page
 *                    apps).
 *
 * Session-end reasons (onSessionEnd is called exactly once per session, per tab):
 *   "session_expired"        idle timeout or absolute lifetime passed
 *   "session_revoked"        revoked on the server (logout elsewhere, password change, admin)
 *   "refresh_token_reused"   a stolen/replayed refresh token was detected: session revoked
 *   "refresh_token_invalid"  the refresh cookie is missing or unknown
 *   "csrf_failed"            the service refused the CSRF proof (cookie missing or stale)
 *   "logged_out"             logout() in this tab or another tab, or the session's cookies
 *                            were cleared (cookies that lapse at the session's deadline, as
 *                            they do by Max-Age, are reported as "session_expired")
 *
 * How it works
 *   * Transport: login, refresh and logout send `Session-Transport: cookie`, `credentials:
 *     "include"` and a JSON body. The refresh token lives only in the HttpOnly cookie
 *     `__Secure-refresh_token`; this module never sees it. Refresh and logout send
 *     `X-CSRF-Token` read from the `__Host-csrf_token` cookie. The access token is kept in a
 *     closure variable: never in localStorage, sessionStorage or a cookie.
 *   * Silent refresh: on page load (when the CSRF cookie shows a session may exist), and at the
 *     server's `refresh_after` if the app made requests since the last token ("a user who keeps
 *     working is never logged out"). A refresh counts as activity on the server (it slides the
 *     idle deadline), so an idle tab does not refresh on a timer: it lets the access token
 *     lapse and refreshes on the next request. At the session's idle/absolute deadline the
 *     client checks with the server (session-status, or a refresh when the token has lapsed)
 *     and reports `session_expired` without waiting for the user to click.
 *   * Tabs: refreshes are single-flight across the tabs of an origin with the Web Locks API
 *     (lock "authsvc-refresh"; a BroadcastChannel announcement protocol where Web Locks are
 *     missing). A tab that refreshed posts the new access token and session on the
 *     BroadcastChannel "authsvc"; the others adopt it instead of rotating again. Should two
 *     refreshes still race, the server answers a retried refresh token with the same successor
 *     for 30 s, so a concurrent refresh is never treated as a logout. A refresh whose token was
 *     rotated twice meanwhile (another tab moved on, or a stalled server answers late) gets
 *     401 "refresh_token_superseded": not a session end either; the client adopts the newer
 *     token a peer broadcasts, or refreshes again with the cookie, which holds the newer token
 *     by then. Logout and session ends are broadcast too, so every tab learns of them at once
 *     (and a tab that missed the message learns it from its next refresh or status check).
 *   * Network blips: a refresh that fails for network reasons (or 408/429/5xx) is retried with
 *     backoff (0.25 s doubling to 30 s, sooner when the browser comes back online); it never
 *     ends the session. A `fetch()` waiting on such a refresh gives up after 15 s with a
 *     TypeError, as a plain fetch would, while the retries go on in the background.
 *   * Clocks: server instants are mapped to this machine's clock from the access token's
 *     `iat`, biased late for deadline checks and early for token expiry, so a skewed client
 *     clock neither logs users out nor sends expired tokens.
 *
 * WebSockets (`socket()`, for services behind authsvc-kit, e.g. examples/notes `/ws`)
 *     const feed = auth.socket("/notes/ws", {
 *       onOpen: () => {},                     // connected and authenticated (again)
 *       onMessage: (message, event) => {},    // JSON text frames parsed; others as received
 *       onClose: ({ code, reason, final }) => {},  // final: no reconnect follows
 *     });
 *     feed.send({ type: "note", text: "hi" });   // objects as JSON; false when not connected
 *     feed.close();
 *   * The token never goes in the URL: the first message is {"type": "authenticate", "token"}
 *     (a browser's WebSocket cannot set headers). Relative URLs resolve against the page;
 *     http(s) becomes ws(s).
 *   * In-band renewal: every new access token (a silent refresh here or in another tab) is
 *     sent on each open socket as another `authenticate` message (when its exp is later than
 *     the one the socket holds); the server answers `token_renewed` and the connection goes
 *     on. On the server's `token_expiring` the client sends a newer token it holds, or
 *     refreshes to get one. So an open socket keeps the session in use: its idle deadline
 *     slides while the socket is open (the absolute lifetime still ends it).
 *   * Reconnects, with backoff (0.25 s doubling to 30 s, jittered; sooner when the browser
 *     comes back online), after a network error or any close by the server except 4403; after
 *     4401 `token_expired` or 4400 `authentication_required` it refreshes the token first.
 *   * Never reconnects after a 4403 (`session_revoked`: a back-channel logout reached the
 *     service; any 4403 refuses this session for good): the socket ends (final) and the client asks authsvc whether the session is over
 *     (session-status, which does not slide it); if it is, onSessionEnd reports it as any
 *     other end ("session_revoked", or "logged_out" when this tab or another logged out).
 *     Never reconnects after close() or once the session ends (logout here or in another tab,
 *     expiry): every socket is closed (code 1000), final, with the session-end reason.
 *   * Protocol messages (token_expiring, token_renewed, token_rejected) are handled here and
 *     not passed to onMessage; `renewals` counts token_renewed, `connections` the connection
 *     attempts so far (1 while no reconnect happened).
 *
 * Limitations: the CSRF cookie must be readable by the page, so the page and the service must
 * share an origin (or the service must return `csrf_token` in the token response body, which
 * this client uses when present).
 */

const CSRF_COOKIE = "__Host-csrf_token";
const LOCK_NAME = "authsvc-refresh";
const CHANNEL_NAME = "authsvc";
const SESSION_END_CODES = new Set([
  "session_expired",
  "session_revoked",
  "refresh_token_reused",
  "refresh_token_invalid",
]);
// A refresh that lost to another tab's or request's: not a session end (see refreshRequest).
const SUPERSEDED_CODE = "refresh_token_superseded";
const FETCH_REFRESH_TIMEOUT_MS = 15000;
const REQUEST_TIMEOUT_MS = 10000; // a hung refresh must not hold the cross-tab lock forever
const LOCK_WAIT_MS = 25000; // then proceed without the lock (the server tolerates races)
const PEER_REFRESH_WAIT_MS = 5000;
const MAX_TIMER_MS = 6 * 3600 * 1000; // setTimeout overflows past 2^31 ms; re-arm instead
const DEADLINE_GRACE_MS = 250;
const COOKIE_SLACK_MS = 2500; // cookie Max-Age is whole seconds and our deadlines map late
// authsvc-kit's WebSocket close codes (docs/downstream.md).
const WS_AUTHENTICATION_REQUIRED = 4400;
const WS_TOKEN_EXPIRED = 4401;
const WS_SESSION_REVOKED = 4403;
const WS_STABLE_MS = 10000; // a connection that lived this long resets the reconnect backoff
const WS_RENEW_RETRY_MS = 1000; // after token_rejected (the service could not check it yet)
const WS_KIT_MESSAGES = new Set(["token_expiring", "token_renewed", "token_rejected"]);

/** An error answered by the service: `code` is its stable error code. */
export class AuthError extends Error {
  constructor(code, message, status) {
    super(message || code);
    this.name = "AuthError";
    this.code = code;
    this.status = status;
  }
}

export function createAuthClient({ baseUrl = "", onSessionEnd, onChange } = {}) {
  const base = String(baseUrl || "").replace(/\/+$/, "");
  const channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(CHANNEL_NAME) : null;
  const tabId = Math.random().toString(36).slice(2);

  let state = null; // the current tokens; see accept()
  let csrfFromBody = null; // only when the service returns csrf_token in the body
  let active = false; // the app made a successful request since the last token
  let epoch = 0; // bumped by login/logout/end: late answers of older operations are dropped
  let inflight = null; // this tab's refresh in progress (single flight within the tab)
  let closed = false;
  let refreshTimer = null;
  let deadlineTimer = null;
  let peerRefreshingUntil = 0; // fallback lock: a peer announced it is refreshing
  let loggingOut = null; // {sessionId, at}: a logout is under way (here or in a peer)
  const endedSessions = new Set(); // onSessionEnd fired for these ids (exactly once each)
  const sleepers = new Set(); // backoff waits, woken early when the browser comes online
  const messageWaiters = new Set(); // fallback lock: waiting for a peer's result
  const sockets = new Set(); // live socket() helpers: renewed on new tokens, closed at the end

  // ---------------------------------------------------------------- helpers

  const now = () => Date.now();

  function url(path) {
    return base + path;
  }

  function resolveInput(input) {
    if (typeof input === "string" && input.startsWith("/") && !input.startsWith("//")) {
      return url(input);
    }
    return input;
  }

  function readCookie(name) {
    if (typeof document === "undefined" || !document.cookie) return null;
    for (const part of document.cookie.split(";")) {
      const eq = part.indexOf("=");
      if (eq < 0) continue;
      if (part.slice(0, eq).trim() === name) {
        const value = part.slice(eq + 1).trim();
        try {
          return decodeURIComponent(value) || null;
        } catch {
          return value || null;
        }
      }
    }
    return null;
  }

  function csrfToken() {
    return readCookie(CSRF_COOKIE) || csrfFromBody;
  }

  function cookieHeaders(extra = {}) {
    return {
      "Content-Type": "application/json",
      "Session-Transport": "cookie",
      ...extra,
    };
  }

  function decodeJwt(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      const padded = part + "=".repeat((4 - (part.length % 4)) % 4);
      return JSON.parse(atob(padded));
    } catch {
      return null;
    }
  }

  async function errorCode(response) {
    try {
      const body = await response.clone().json();
      if (body && typeof body.error === "object" && body.error) {
        return { code: body.error.code || null, message: body.error.message || "" };
      }
      if (body && typeof body.error === "string") {
        return { code: body.error, message: body.error_description || "" };
      }
    } catch {
      // not JSON
    }
    return { code: null, message: "" };
  }

  function timeoutSignal(ms) {
    return typeof AbortSignal !== "undefined" && AbortSignal.timeout ? AbortSignal.timeout(ms) : undefined;
  }

  function isTransient(status) {
    return status === 408 || status === 429 || status >= 500;
  }

  function backoff(attempt) {
    const ms = Math.min(30000, 250 * 2 ** attempt);
    return ms / 2 + Math.random() * (ms / 2);
  }

  function sleep(ms) {
    return new Promise((resolve) => {
      const entry = { resolve: () => done() };
      const timer = setTimeout(() => done(), ms);
      function done() {
        clearTimeout(timer);
        sleepers.delete(entry);
        resolve();
      }
      sleepers.add(entry);
    });
  }

  function wakeSleepers() {
    for (const entry of [...sleepers]) entry.resolve();
  }

  function call(callback, ...args) {
    if (typeof callback !== "function") return;
    try {
      callback(...args);
    } catch (error) {
      if (typeof reportError === "function") reportError(error);
      else setTimeout(() => { throw error; });
    }
  }

  function post(message) {
    if (!channel || closed) return;
    try {
      channel.postMessage({ ...message, from: tabId });
    } catch {
      // the channel is closed (page unloading)
    }
  }

  function setTimer(fn, at) {
    const delay = Math.max(0, at - now());
    if (delay > MAX_TIMER_MS) return setTimeout(() => rearm(), MAX_TIMER_MS);
    return setTimeout(fn, delay);
    function rearm() {
      schedule();
    }
  }

  // ---------------------------------------------------------------- state

  /**
   * Take a token response (from the server, or from a peer tab) as the current state.
   * Server instants are mapped to this clock through the token's iat: `serverOffset` is the
   * local time minus the server time at issue, which iat (whole seconds, rounded down) makes
   * up to a second too large, so mapped deadlines fall late (safe for deadline checks, which
   * must never fire early and slide an idle session), while the token is taken as expired
   * early, from `expires_in` less the rounding and a margin.
   */
  function accept(body, receivedAt, { broadcast }) {
    const claims = decodeJwt(body.access_token) || {};
    const ttlMs = Math.max(1, Number(body.expires_in) || 0) * 1000;
    const serverOffset =
      typeof claims.iat === "number" ? receivedAt - claims.iat * 1000 : 0;
    const toLocal = (iso) => Date.parse(iso) + serverOffset;
    // expires_in counts from iat, which is rounded down: up to a second of the token's life
    // may already be gone. Keep a further margin for the request's trip to the server.
    const usableMs = Math.max(ttlMs / 2, ttlMs - 1000 - Math.min(1000, ttlMs / 10));
    const expiresLocal = receivedAt + usableMs;
    const previous = state;
    state = {
      access: body.access_token,
      body,
      sessionId: String(body.session.id),
      receivedAt,
      serverOffset,
      exp: typeof claims.exp === "number" ? claims.exp : null,
      expiresLocal,
      refreshLocal: Math.min(toLocal(body.refresh_after), expiresLocal),
      idleLocal: toLocal(body.session.idle_expires_at),
      absoluteLocal: toLocal(body.session.absolute_expires_at),
      session: {
        ...body.session,
        refresh_after: body.refresh_after,
        expires_at: typeof claims.exp === "number" ? new Date(claims.exp * 1000).toISOString() : null,
      },
    };
    if (typeof body.csrf_token === "string" && body.csrf_token) csrfFromBody = body.csrf_token;
    active = false;
    schedule();
    if (broadcast) post({ type: "token", body, age: now() - receivedAt });
    if (!previous || previous.access !== state.access) {
      for (const live of [...sockets]) live.renew();
      call(onChange, sessionView());
    }
  }

  function sessionView() {
    return state ? { ...state.session } : null;
  }

  /** The session's known deadline has passed (within the cookies' whole-second rounding). */
  function pastDeadline() {
    return state !== null && now() >= Math.min(state.idleLocal, state.absoluteLocal) - COOKIE_SLACK_MS;
  }

  function tokenUsable() {
    return state !== null && now() < state.expiresLocal;
  }

  function clearState() {
    state = null;
    active = false;
    clearTimeout(refreshTimer);
    clearTimeout(deadlineTimer);
    refreshTimer = deadlineTimer = null;
  }

  /** The session is over: tell the app once, tell the other tabs, forget the tokens. */
  function endSession(reason, { fromPeer = false, sessionId = null } = {}) {
    const id = (state && state.sessionId) || sessionId;
    const had = state !== null;
    if (
      reason === "session_revoked" &&
      loggingOut &&
      (!id || loggingOut.sessionId === id) &&
      now() - loggingOut.at < 10000
    ) {
      reason = "logged_out"; // our own or a peer's logout got there first
    }
    epoch += 1;
    clearState();
    for (const live of [...sockets]) live.end(reason);
    const key = id || "no-session";
    if (!fromPeer && id) post({ type: "end", reason, sessionId: id });
    if (!endedSessions.has(key)) {
      endedSessions.add(key);
      call(onSessionEnd, { reason, sessionId: id });
    }
    if (had) call(onChange, null);
  }

  function schedule() {
    clearTimeout(refreshTimer);
    clearTimeout(deadlineTimer);
    refreshTimer = deadlineTimer = null;
    if (!state || closed) return;
    refreshTimer = setTimer(onRefreshDue, state.refreshLocal);
    const deadline = Math.min(state.idleLocal, state.absoluteLocal) + DEADLINE_GRACE_MS;
    deadlineTimer = setTimer(onDeadline, deadline);
  }

  function onRefreshDue() {
    refreshTimer = null;
    if (!state || now() < state.refreshLocal) return schedule();
    // Only a tab in use keeps the session alive; an idle one lets the token lapse.
    if (active) refresh().catch(() => {});
  }

  async function onDeadline() {
    deadlineTimer = null;
    if (!state) return;
    const at = Math.min(state.idleLocal, state.absoluteLocal);
    if (now() < at) return schedule();
    await checkDeadline();
  }

  /** At a known deadline: ask the server (without sliding if we can) whether it passed. */
  async function checkDeadline() {
    if (!state) return;
    if (tokenUsable()) {
      const body = await status();
      if (body || !state) return; // status() rescheduled, or the session ended
    }
    if (state) await refresh().catch(() => {});
  }

  // ---------------------------------------------------------------- cross-tab

  function withRefreshLock(fn) {
    if (typeof navigator !== "undefined" && navigator.locks && navigator.locks.request) {
      let signal;
      if (typeof AbortSignal !== "undefined" && AbortSignal.timeout) {
        signal = AbortSignal.timeout(LOCK_WAIT_MS);
      }
      return navigator.locks
        .request(LOCK_NAME, signal ? { signal } : {}, fn)
        .catch((error) => {
          if (error && error.name === "AbortError") return fn(); // a stuck holder: go on
          throw error;
        });
    }
    return fallbackLock(fn);
  }

  /** Without Web Locks: announce the refresh, and wait for a peer that announced first. */
  async function fallbackLock(fn) {
    if (!channel) return fn();
    await sleep(Math.random() * 40); // break ties between tabs opened together
    const giveUp = now() + PEER_REFRESH_WAIT_MS;
    while (peerRefreshingUntil > now() && now() < giveUp) {
      await new Promise((resolve) => {
        const waiter = () => {
          clearTimeout(timer);
          messageWaiters.delete(waiter);
          resolve();
        };
        const timer = setTimeout(waiter, Math.max(0, giveUp - now()));
        messageWaiters.add(waiter);
      });
    }
    post({ type: "refreshing" });
    try {
      return await fn();
    } finally {
      post({ type: "refresh-done" });
    }
  }

  function onMessage(event) {
    const message = event.data;
    if (!message || message.from === tabId || closed) return;
    switch (message.type) {
      case "refreshing":
        peerRefreshingUntil = now() + PEER_REFRESH_WAIT_MS;
        return;
      case "refresh-done":
        peerRefreshingUntil = 0;
        break;
      case "token": {
        peerRefreshingUntil = 0;
        const body = message.body;
        if (!body || !body.access_token || !body.session) break;
        const id = String(body.session.id);
        if (endedSessions.has(id)) break; // a late message about a session that is over
        if (state && state.sessionId === id) {
          const exp = (decodeJwt(body.access_token) || {}).exp;
          if (state.access === body.access_token) break;
          if (state.exp !== null && typeof exp === "number" && exp < state.exp) break;
        }
        if (loggingOut && loggingOut.sessionId === id) break;
        accept(body, now() - Math.max(0, Number(message.age) || 0), { broadcast: false });
        break;
      }
      case "logging-out":
        loggingOut = { sessionId: message.sessionId, at: now() };
        break;
      case "end":
        if (message.sessionId) {
          if (state && state.sessionId === message.sessionId) {
            endSession(message.reason || "logged_out", { fromPeer: true });
          } else {
            endedSessions.add(message.sessionId);
          }
        }
        break;
      default:
        return;
    }
    for (const waiter of [...messageWaiters]) waiter();
  }

  // ---------------------------------------------------------------- refresh

  /** One refresh request. Never throws: returns what happened. */
  async function refreshRequest() {
    const csrf = csrfToken();
    if (!csrf) return { kind: "no-cookie" };
    let response;
    try {
      response = await fetch(url("/auth/refresh"), {
        method: "POST",
        credentials: "include",
        cache: "no-store",
        headers: cookieHeaders({ "X-CSRF-Token": csrf }),
        body: "{}",
        signal: timeoutSignal(REQUEST_TIMEOUT_MS),
      });
    } catch (error) {
      return { kind: "transient", error };
    }
    const receivedAt = now();
    if (response.ok) {
      try {
        return { kind: "ok", body: await response.json(), receivedAt };
      } catch (error) {
        return { kind: "transient", error };
      }
    }
    const { code } = await errorCode(response);
    if (isTransient(response.status)) {
      return { kind: "transient", error: new TypeError(`refresh answered ${response.status}`) };
    }
    // Another tab or request refreshed first, and its answer left the newer token in the
    // cookie jar: not a session end.
    if (code === SUPERSEDED_CODE) return { kind: "newer" };
    if (response.status === 401) return { kind: "end", reason: code || "refresh_token_invalid" };
    if (response.status === 403) return { kind: "end", reason: code || "csrf_failed" };
    return { kind: "end", reason: code || `http_${response.status}` };
  }

  /**
   * Refresh with retries, single-flight across tabs. `stale` is the access token we want
   * replaced: if, once we hold the lock, the current token is a different one that is still
   * usable (a peer refreshed and broadcast it), we adopt it and make no request.
   */
  async function refreshLoop(stale, hooks = {}) {
    const started = epoch;
    for (let attempt = 0; !closed; attempt += 1) {
      const outcome = await withRefreshLock(async () => {
        await sleep(0); // let a message posted by the previous holder arrive first
        if (epoch !== started) return { kind: "superseded" };
        if (state && state.access !== stale && tokenUsable()) return { kind: "adopted" };
        const result = await refreshRequest();
        if (epoch !== started) return { kind: "superseded" };
        // Accept inside the lock so peers get the broadcast before they get the lock.
        if (result.kind === "ok") accept(result.body, result.receivedAt, { broadcast: true });
        return result;
      });
      // Ended or replaced meanwhile (a peer's broadcast, a logout): that has been reported.
      if (epoch !== started && outcome.kind !== "ok") return sessionView();
      switch (outcome.kind) {
        case "ok":
        case "adopted":
        case "superseded":
          return sessionView();
        case "no-cookie":
          // The cookies are gone. Their Max-Age is the session's idle window, so at the
          // deadline that means the session expired; before it, a logout cleared them.
          if (state) endSession(pastDeadline() ? "session_expired" : "logged_out");
          return null;
        case "end":
          endSession(outcome.reason);
          return null;
        case "newer":
          // Adopt the token that refresh produced (its tab broadcasts it), or refresh again
          // with the cookie as it is now, after a short wait.
          await sleep(backoff(attempt));
          break;
        default: // transient: keep the session, try again
          if (hooks.onTransient) hooks.onTransient(attempt, outcome.error);
          await sleep(backoff(attempt));
      }
    }
    return sessionView();
  }

  function refresh() {
    if (!inflight) {
      const stale = state ? state.access : null;
      inflight = refreshLoop(stale).finally(() => {
        inflight = null;
      });
    }
    return inflight;
  }

  function withTimeout(promise, ms) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(
        () => reject(new TypeError("authsvc unreachable: could not refresh the access token")),
        ms,
      );
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  // ---------------------------------------------------------------- public API

  async function login(email, password, deviceName) {
    const payload = { email, password };
    if (deviceName) payload.device_name = deviceName;
    return withRefreshLock(async () => {
      const response = await fetch(url("/auth/login"), {
        method: "POST",
        credentials: "include",
        cache: "no-store",
        headers: cookieHeaders(),
        body: JSON.stringify(payload),
        signal: timeoutSignal(3 * REQUEST_TIMEOUT_MS),
      });
      const receivedAt = now();
      if (!response.ok) {
        const { code, message } = await errorCode(response);
        throw new AuthError(code || `http_${response.status}`, message, response.status);
      }
      const body = await response.json();
      epoch += 1;
      loggingOut = null;
      accept(body, receivedAt, { broadcast: true });
      return sessionView();
    });
  }

  async function logout() {
    const current = state;
    const sessionId = current ? current.sessionId : null;
    loggingOut = { sessionId, at: now() };
    if (sessionId) post({ type: "logging-out", sessionId });
    let failure = null;
    await withRefreshLock(async () => {
      for (let attempt = 0; attempt < 3; attempt += 1) {
        const extra = {};
        const csrf = csrfToken();
        if (csrf) extra["X-CSRF-Token"] = csrf;
        if (current && now() < current.expiresLocal && attempt === 0) {
          extra.Authorization = `Bearer ${current.access}`;
        }
        try {
          const response = await fetch(url("/auth/logout"), {
            method: "POST",
            credentials: "include",
            cache: "no-store",
            keepalive: true,
            headers: cookieHeaders(extra),
            body: "{}",
            signal: timeoutSignal(REQUEST_TIMEOUT_MS),
          });
          if (response.status === 401 && extra.Authorization) continue; // try the cookie
          if (isTransient(response.status)) throw new TypeError(`logout answered ${response.status}`);
          failure = null;
          return; // 204, or the session was already over
        } catch (error) {
          failure = error;
          await sleep(backoff(attempt + 1));
        }
      }
    });
    endSession("logged_out", { sessionId });
    if (failure) throw failure;
  }

  async function authFetch(input, init = {}) {
    await ready;
    const target = resolveInput(input);
    const spare = typeof Request === "function" && target instanceof Request ? target.clone() : null;
    const path = (() => {
      try {
        return new URL(typeof target === "string" ? target : target.url, location.href).pathname;
      } catch {
        return "";
      }
    })();
    const passive = path.endsWith("/auth/session-status");

    if (state && !tokenUsable() && !passive) {
      await withTimeout(refresh(), FETCH_REFRESH_TIMEOUT_MS);
    }
    const send = (request, token) => {
      const headers = new Headers(
        init.headers || (typeof Request === "function" && request instanceof Request ? request.headers : undefined),
      );
      if (token) headers.set("Authorization", `Bearer ${token}`);
      return fetch(request, { ...init, headers });
    };
    const used = state ? state.access : null;
    let response = await send(target, used);
    if (response.status === 401 && used) {
      const { code } = await errorCode(response);
      if (code === "token_expired" && !passive) {
        if (state && state.access === used) await withTimeout(refresh(), FETCH_REFRESH_TIMEOUT_MS);
        if (state && state.access !== used) {
          response = await send(spare || target, state.access);
          if (response.status === 401) {
            const retried = state ? state.access : null;
            const retry = await errorCode(response);
            if (SESSION_END_CODES.has(retry.code) && retried && state && state.access === retried) {
              endSession(retry.code);
            }
          }
        }
      } else if (SESSION_END_CODES.has(code) && state && state.access === used) {
        endSession(code);
      }
    }
    if (response.ok && !passive && state) active = true;
    return response;
  }

  async function status() {
    if (!tokenUsable()) return null;
    const used = state.access;
    let response;
    try {
      response = await fetch(url("/auth/session-status"), {
        headers: { Authorization: `Bearer ${used}` },
        cache: "no-store",
        signal: timeoutSignal(REQUEST_TIMEOUT_MS),
      });
    } catch {
      return null;
    }
    const receivedAt = now();
    if (!state || state.access !== used) return null;
    if (response.ok) {
      const body = await response.json();
      // server_time is exact: it maps the deadlines better than iat did.
      // (the offset includes the response's trip, so mapped deadlines fall late, never early)
      const offset = receivedAt - Date.parse(body.server_time);
      const idleLocal = Date.parse(body.session.idle_expires_at) + offset;
      const absoluteLocal = Date.parse(body.session.absolute_expires_at) + offset;
      const changed = state.session.idle_expires_at !== body.session.idle_expires_at;
      state.idleLocal = idleLocal;
      state.absoluteLocal = absoluteLocal;
      state.session.idle_expires_at = body.session.idle_expires_at;
      state.session.absolute_expires_at = body.session.absolute_expires_at;
      schedule();
      if (changed) call(onChange, sessionView());
      return body;
    }
    if (response.status === 401) {
      const { code } = await errorCode(response);
      if (SESSION_END_CODES.has(code) && state && state.access === used) endSession(code);
    }
    return null;
  }

  function close() {
    for (const live of [...sockets]) live.end("closed");
    closed = true;
    epoch += 1;
    clearTimeout(refreshTimer);
    clearTimeout(deadlineTimer);
    wakeSleepers();
    if (channel) {
      channel.removeEventListener("message", onMessage);
      channel.close();
    }
    if (typeof window !== "undefined") {
      window.removeEventListener("online", wakeSleepers);
      document.removeEventListener("visibilitychange", onVisible);
    }
  }

  function onVisible() {
    if (document.visibilityState !== "visible" || !state) return;
    // Timers are throttled in background tabs: catch up on what fell due meanwhile.
    if (now() >= Math.min(state.idleLocal, state.absoluteLocal)) checkDeadline();
    else if (now() >= state.refreshLocal && active) refresh().catch(() => {});
  }

  // ---------------------------------------------------------------- WebSockets

  function socketUrl(target) {
    const where = new URL(String(target), typeof location !== "undefined" ? location.href : undefined);
    if (where.protocol === "http:") where.protocol = "ws:";
    else if (where.protocol === "https:") where.protocol = "wss:";
    if (where.protocol !== "ws:" && where.protocol !== "wss:") {
      throw new TypeError(`not a WebSocket URL: ${target}`);
    }
    return where.href;
  }

  function tokenExp(token) {
    const exp = token ? (decodeJwt(token) || {}).exp : null;
    return typeof exp === "number" ? exp : null;
  }

  /** A usable access token for a (re)connection, refreshing when `stale` is still ours. */
  async function socketToken(stale) {
    await ready;
    if (state && (!tokenUsable() || (stale && state.access === stale))) {
      await withTimeout(refresh(), FETCH_REFRESH_TIMEOUT_MS);
    }
    return state && tokenUsable() ? state.access : null;
  }

  /** After a 4403: ask authsvc (without sliding the session) whether the session is over. */
  async function confirmRevoked() {
    if (!state) return;
    if (tokenUsable()) await status(); // a 401 session_revoked ends the session in there
    else await refresh().catch(() => {});
  }

  function openSocket(target, { onOpen, onMessage, onClose } = {}) {
    const address = socketUrl(target);
    let ws = null; // the current connection
    let phase = "connecting"; // connecting | open | reconnecting | closed
    let attempt = 0; // reconnects since the last connection that proved itself
    let sent = null; // the token the current connection was last given
    let sentExp = null; // and its exp: a renewal must be later (the server demands it)
    let proven = false; // the current connection received a message (so it authenticated)
    let openedAt = 0;
    let connections = 0; // attempts, failed ones included
    let renewals = 0;

    function sendToken(token) {
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      ws.send(JSON.stringify({ type: "authenticate", token }));
      sent = token;
      sentExp = tokenExp(token);
    }

    /** A newer token than the connection holds is sent in-band (no reconnect). */
    function renew() {
      if (phase !== "open" || !state || !tokenUsable()) return false;
      const exp = state.exp;
      if (exp === null || (sentExp !== null && exp <= sentExp)) return false;
      sendToken(state.access);
      return true;
    }

    async function onExpiring() {
      if (renew()) return;
      // Nothing newer here yet: refresh (accept() then renews every socket).
      await refresh().catch(() => {});
      renew();
    }

    function finish(code, reason) {
      if (phase === "closed") return;
      phase = "closed";
      sockets.delete(handle);
      call(onClose, { code, reason, final: true });
    }

    /** The session ended, or close(): close for good. */
    function end(reason) {
      const current = ws;
      ws = null;
      if (current && current.readyState <= WebSocket.OPEN) {
        try {
          current.close(1000, reason === "closed" ? "" : String(reason).slice(0, 100));
        } catch {
          // already closing
        }
      }
      finish(1000, reason);
    }

    async function connect(stale) {
      let token = null;
      try {
        token = await socketToken(stale);
      } catch {
        // authsvc unreachable for now: try again later, the session is not over
        if (phase !== "closed") reconnect(null);
        return;
      }
      if (phase === "closed") return;
      if (!token) {
        finish(1000, "not_authenticated"); // no session, or it ended meanwhile
        return;
      }
      const current = new WebSocket(address);
      ws = current;
      connections += 1;
      sent = sentExp = null;
      proven = false;
      current.addEventListener("open", () => {
        if (ws !== current) return;
        if (!state) return end("not_authenticated");
        sendToken(state.access); // the newest token: it may have changed while connecting
        phase = "open";
        openedAt = now();
        call(onOpen);
      });
      current.addEventListener("message", (event) => {
        if (ws === current) received(event);
      });
      // "error" is always followed by "close": reconnecting is decided there.
      current.addEventListener("close", (event) => {
        if (ws === current) lost(event);
      });
    }

    function received(event) {
      proven = true;
      attempt = 0;
      let message = event.data;
      if (typeof message === "string") {
        try {
          message = JSON.parse(message);
        } catch {
          // not JSON: the application gets the text
        }
      }
      const kind = message && typeof message === "object" ? message.type : null;
      if (WS_KIT_MESSAGES.has(kind)) {
        if (kind === "token_expiring") onExpiring();
        else if (kind === "token_renewed") renewals += 1;
        else {
          // The service could not check the renewal (its keys unavailable): resend later.
          const token = sent;
          setTimeout(() => {
            if (phase === "open" && sent === token && state && state.access === token) {
              sendToken(token);
            }
          }, WS_RENEW_RETRY_MS);
        }
        return;
      }
      call(onMessage, message, event);
    }

    function lost(event) {
      ws = null;
      const token = sent;
      if (proven || (openedAt && now() - openedAt >= WS_STABLE_MS)) attempt = 0;
      if (phase === "closed") return;
      if (event.code === WS_SESSION_REVOKED) {
        // The session was logged out (back-channel logout): never reconnect.
        finish(event.code, event.reason || "session_revoked");
        confirmRevoked();
        return;
      }
      phase = "reconnecting";
      call(onClose, { code: event.code, reason: event.reason, final: false });
      const refused = event.code === WS_TOKEN_EXPIRED || event.code === WS_AUTHENTICATION_REQUIRED;
      reconnect(refused ? token : null);
    }

    async function reconnect(stale) {
      openedAt = 0;
      const wait = backoff(attempt);
      attempt += 1;
      if (stale && state && state.access === stale) await refresh().catch(() => {});
      await sleep(wait);
      if (phase !== "closed") connect(stale);
    }

    const handle = {
      renew,
      end,
      send(data) {
        if (phase !== "open" || !ws || ws.readyState !== WebSocket.OPEN) return false;
        const raw = typeof data === "string" || data instanceof Blob || data instanceof ArrayBuffer;
        ws.send(raw || ArrayBuffer.isView(data) ? data : JSON.stringify(data));
        return true;
      },
    };
    const api = {
      send: handle.send,
      close: () => end("closed"),
      get state() {
        return phase;
      },
      get connections() {
        return connections;
      },
      get renewals() {
        return renewals;
      },
    };
    if (closed) {
      finish(1000, "closed");
      return api;
    }
    sockets.add(handle);
    connect(null);
    return api;
  }

  // ---------------------------------------------------------------- start

  if (channel) channel.addEventListener("message", onMessage);
  if (typeof window !== "undefined") {
    window.addEventListener("online", wakeSleepers);
    document.addEventListener("visibilitychange", onVisible);
  }

  let resolveReady;
  const ready = new Promise((resolve) => {
    resolveReady = resolve;
  });
  if (csrfToken()) {
    inflight = refreshLoop(null, {
      onTransient: () => resolveReady(null), // offline: render now, keep retrying
    }).finally(() => {
      inflight = null;
    });
    inflight.then(resolveReady, () => resolveReady(null));
  } else {
    resolveReady(null); // no session cookie: nothing to refresh
  }

  return {
    ready,
    login,
    logout,
    fetch: authFetch,
    status,
    refresh: () => refresh(),
    accessToken: () => (state ? state.access : null),
    session: sessionView,
    socket: openSocket,
    close,
  };
}
