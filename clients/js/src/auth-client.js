/**
 * @authsvc/client: the browser client for authsvc ("browser mode"), cookie or bearer transport.
 *
 * An ES module with no dependencies; the types below are JSDoc, from which `npm run build`
 * emits dist/auth-client.d.ts. The service serves the build at /static/auth-client.js:
 *
 *     import { createAuthClient } from "@authsvc/client";   // or "/static/auth-client.js"
 *
 *     const auth = createAuthClient({
 *       baseUrl: "",                       // where authsvc lives; "" = this origin
 *       transport: "cookie",               // or "bearer" (refresh token held by the client)
 *       name: "authsvc",                   // namespace of the lock, channel, IndexedDB, storage
 *       onSessionEnd: ({ reason }) => {},  // the session ended; reason says why (below)
 *       onSessionExpired: (end) => {},     // ... at its idle or absolute deadline
 *       onLogout: (end) => {},             // ... any other way (logout here or elsewhere...)
 *       onRefresh: (session) => {},        // a refresh (here or in another tab) gave new tokens
 *       onChange: (session) => {},         // new tokens or deadlines, or null when logged out
 *       onRetry: ({ status, delayMs }) => {},  // unreachable or 429/5xx: retrying, not over
 *       dpop: false,                       // true: bind the session to a browser key (below)
 *     });
 *     const session = await auth.ready;    // after the silent refresh on page load
 *     if (!session) await auth.login(email, password, "laptop");
 *     const response = await auth.fetch("/auth/me");   // Bearer added, expiry handled
 *     await auth.logout();
 *
 * API of the returned object
 *   ready            Promise<session | null>, settled once the silent refresh on page load has
 *                    an outcome: the session, or null when there is none. While the service
 *                    cannot be reached or asks to wait (429, 503) it stays pending (onRetry
 *                    tells): a live session is never shown as logged out.
 *   login(email, password, deviceName?)  -> Promise<session>. Rejects with an AuthError whose
 *                    `code` is the service's error code (e.g. "invalid_credentials"), or
 *                    "cookies_not_stored" when a cookie login's cookies did not stick (the
 *                    CSRF cookie is missing right after it; that session is logged out), or
 *                    "mfa_required" when the account has a second factor: its `detail` holds
 *                    {challenge, methods, expiresIn} for loginMfa (docs/mfa.md).
 *   loginMfa(challenge, {code} | {recoveryCode} | {passkey: true})  -> Promise<session>: the
 *                    second step.
 *                    Rejects with "invalid_mfa_code" (try again) or "mfa_challenge_invalid"
 *                    (log in again).
 *   stepUp({code} | {recoveryCode} | {passkey: true})  -> Promise<{acr, amr, acrExpiresAt}>:
 *                    prove a second factor again in this session (acr "mfa" for STEP_UP_TTL);
 *                    the new access token replaces the old one in every tab.
 *   registerPasskey({password, name?})  -> Promise<passkey>: add a passkey (the browser asks
 *                    the user); loginWithPasskey({deviceName?}) -> Promise<session>: log in
 *                    with one alone. loginMfa(challenge, {passkey: true}) answers a login's
 *                    second step with one (docs/mfa.md).
 *   logout()         -> Promise<void>. Revokes the session on the server, clears this tab and
 *                    every other tab of the same origin (onSessionEnd({reason: "logged_out"})).
 *   fetch(input, init)  -> Promise<Response>, like window.fetch plus `Authorization: Bearer`
 *                    (or, for a DPoP-bound token, `Authorization: DPoP` and a `DPoP` proof).
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
 *   dpopThumbprint() -> Promise<string | null>: the RFC 7638 thumbprint of this browser's DPoP
 *                    key (what bound tokens carry as cnf.jkt); null outside DPoP mode.
 *
 * Session-end reasons (onSessionEnd is called exactly once per session, per tab):
 *   "session_expired"        idle timeout or absolute lifetime passed
 *   "session_revoked"        revoked on the server (logout elsewhere, password change, admin)
 *   "refresh_token_reused"   a stolen/replayed refresh token was detected: session revoked
 *   "refresh_token_invalid"  the refresh cookie is missing or unknown
 *   "csrf_failed"            the service refused the CSRF proof (cookie missing or stale)
 *   "invalid_dpop_proof"     DPoP mode: the service refused this browser's proof for the
 *                            session (its key is gone, e.g. site storage was cleared, or the
 *                            session is bound to another key): this browser cannot refresh it
 *   "dpop_unsupported"       DPoP mode without WebCrypto (not a secure context)
 *   "logged_out"             logout() in this tab or another tab, or the session's cookies
 *                            were cleared (cookies that lapse at the session's deadline, as
 *                            they do by Max-Age, are reported as "session_expired")
 *
 * How it works
 *   * Transport: login, refresh and logout send `Session-Transport: cookie`, `credentials:
 *     "include"` and a JSON body. The refresh token lives only in the HttpOnly cookie
 *     `__Secure-refresh_token`; this module never sees it. Refresh and logout send
 *     `X-CSRF-Token` read from the `__Host-csrf_token` cookie. The access token is kept in a
 *     closure variable: never in localStorage, sessionStorage or a cookie. Bearer transport
 *     (`transport: "bearer"`): no cookies; the refresh token comes in the body and is kept in
 *     memory, or in `storage` (e.g. sessionStorage, key "<name>:refresh") if given.
 *   * Silent refresh: on page load (when the CSRF cookie shows a session may exist), and at the
 *     server's `refresh_after` if the app made requests since the last token ("a user who keeps
 *     working is never logged out"). A refresh counts as activity on the server (it slides the
 *     idle deadline), so an idle tab does not refresh on a timer: it lets the access token
 *     lapse and refreshes on the next request. At the session's idle/absolute deadline the
 *     client checks with the server (session-status, or a refresh when the token has lapsed)
 *     and reports `session_expired` without waiting for the user to click.
 *   * Tabs: refreshes are single-flight: queued among the page's clients of one lock name,
 *     then across the tabs of an origin with the Web Locks API (lock "<name>-refresh"; a
 *     BroadcastChannel announcement protocol where Web Locks are missing). A client that
 *     refreshed posts the new access token and session on the BroadcastChannel "<name>", and
 *     leaves it in a record its page's other clients read synchronously when their turn
 *     comes, and commits a marker {sessionId, jti, until} to IndexedDB ("<name>-sync") for
 *     the other tabs; the next holder adopts the page's record, or asks the tabs for the
 *     marker's token ("want-token", only when another client holds a presence lock), instead
 *     of rotating again. Should two
 *     refreshes still race, the server answers a retried refresh token with the same successor
 *     for 30 s, so a concurrent refresh is never treated as a logout. A refresh whose token was
 *     rotated twice meanwhile (another tab moved on, or a stalled server answers late) gets
 *     401 "refresh_token_superseded": not a session end either; the client adopts the newer
 *     token a peer broadcasts, or refreshes again with the cookie, which holds the newer token
 *     by then. Logout and session ends are broadcast too, so every tab learns of them at once
 *     (and a tab that missed the message learns it from its next refresh or status check).
 *   * Network blips: a refresh that fails for network reasons (or 408/429/5xx) is retried with
 *     backoff (0.25 s doubling to 30 s, sooner when the browser comes back online), or after
 *     the answer's Retry-After when that is longer; it never ends the session. A `fetch()` waiting on such a refresh gives up after 15 s with a
 *     TypeError, as a plain fetch would, while the retries go on in the background.
 *   * Clocks: server instants are mapped to this machine's clock from the access token's
 *     `iat`, biased late for deadline checks and early for token expiry, so a skewed client
 *     clock neither logs users out nor sends expired tokens.
 *
 * DPoP (RFC 9449), `dpop: true` or `dpop: {storageName, newKeyAfterLogout}`
 *   * Sender-constrained sessions: login, every refresh (bearer or cookie transport) and, for
 *     a bound token, every fetch() carry a `DPoP` proof signed by one P-256 key per browser
 *     and service. The server binds the session to the key's thumbprint (the access token's
 *     cnf.jkt, `token_type: "DPoP"`) and refreshes it only with a proof by that key, so a
 *     stolen cookie jar or refresh token is useless without the key.
 *   * The key is made by WebCrypto as NOT extractable: script (ours, the app's, an injected
 *     one) can ask it to sign but can never read the private key. The CryptoKey objects are
 *     kept in IndexedDB (database "authsvc-dpop", store "keys", record `storageName`, default
 *     "authsvc:<service base URL>/"), so the key survives reloads and every tab of the origin
 *     uses the same one. The first key is created in one IndexedDB transaction (read, and
 *     write only if absent), so tabs that start together agree on it.
 *   * Proofs: header {typ: "dpop+jwt", alg: "ES256", jwk: public key only}; claims jti
 *     (random), htm, htu (the URL without query or fragment), iat, ath (SHA-256 of the access
 *     token) on token-bearing requests, and nonce once a server sent `DPoP-Nonce` (the latest
 *     one per origin is kept). A 400/401 `use_dpop_nonce` with a `DPoP-Nonce` is retried once
 *     with it. A server's Date more than 2 s from this clock corrects iat for that origin (and
 *     a refused proof whose iat that correction changes is retried once).
 *   * The server decides: where it does not bind (token_type "Bearer"), tokens are sent as
 *     Bearer. Logout keeps the key (it belongs to the browser, not to the session); with
 *     `newKeyAfterLogout: true` it is deleted and the next login makes a new one.
 *   * Without IndexedDB the key lives in the page's memory: the session works in that page,
 *     and a reload or another tab cannot refresh it (ends with "invalid_dpop_proof").
 *   * A cross-origin service must allow the `DPoP` request header and expose `DPoP-Nonce`
 *     (and `WWW-Authenticate`, `Date`) in its CORS answers.
 *   * socket(): a bound token's authenticate messages (the first and each renewal) carry a
 *     `proof` for GET on the socket's URL in its http(s) form (authsvc-kit compares ws(s)
 *     and http(s) as the same), with the token's ath.
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
const DEFAULT_NAME = "authsvc"; // lock "<name>-refresh", channel "<name>", IndexedDB "<name>-dpop"
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
const PEER_TOKEN_WAIT_MS = 2000; // a tab that has the marker's token answers within this (750 ms was exceeded under a loaded CI: a second rotation)
const MAX_RETRY_AFTER_MS = 10 * 60 * 1000; // a longer Retry-After is taken as this
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
  /**
   * @param {string} code the service's error code, or the client's own ("cookies_not_stored",
   *   "dpop_unsupported")
   * @param {string} [message]
   * @param {number} [status] the HTTP status, when an answer carried the code
   * @param {{challenge: string, methods: string[], expiresIn: number}} [detail]
   */
  constructor(code, message, status, detail) {
    super(message || code);
    this.name = "AuthError";
    this.code = code;
    this.status = status;
    /** For "mfa_required": {challenge, methods, expiresIn} to answer with loginMfa(). */
    this.detail = detail;
  }
}

// ---------------------------------------------------------------- DPoP (RFC 9449)

const DPOP_STORE = "keys"; // one record per storage name: {privateKey, publicKey, jwk, jkt}
const DPOP_KEY_ALGORITHM = { name: "ECDSA", namedCurve: "P-256" };
const DPOP_SIGNATURE = { name: "ECDSA", hash: "SHA-256" }; // WebCrypto gives r||s, as ES256 wants
// A server's Date further off than this corrects proof iats (Date is whole seconds; the
// smallest DPOP_IAT_WINDOW the service allows is 5 s).
const CLOCK_SKEW_MS = 2000;
const encoder = new TextEncoder();

function base64url(bytes) {
  let binary = "";
  for (const byte of new Uint8Array(bytes)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

const base64urlJson = (value) => base64url(encoder.encode(JSON.stringify(value)));

async function sha256(text) {
  return base64url(await crypto.subtle.digest("SHA-256", encoder.encode(text)));
}

function isKeyRecord(record) {
  return Boolean(
    record && record.privateKey instanceof CryptoKey && record.jwk && typeof record.jkt === "string",
  );
}

/** A new key: the private half can sign but never leave WebCrypto (not extractable). */
async function newKeyRecord() {
  const pair = await crypto.subtle.generateKey(DPOP_KEY_ALGORITHM, false, ["sign"]);
  const { crv, kty, x, y } = await crypto.subtle.exportKey("jwk", pair.publicKey);
  const jwk = { crv, kty, x, y }; // RFC 7638's members in its order: the thumbprint's input
  return {
    privateKey: pair.privateKey,
    publicKey: pair.publicKey,
    jwk,
    jkt: await sha256(JSON.stringify(jwk)),
    created: Date.now(),
  };
}

function openKeyDatabase(database) {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(database, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(DPOP_STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
    request.onblocked = () => reject(new Error("IndexedDB blocked"));
  });
}

/**
 * The stored key named `name`; with a `candidate`, that one is stored unless a key is there
 * already. The read and the write share one readwrite transaction, which IndexedDB runs one
 * at a time per store, so tabs racing to create the first key all end up with the same one.
 */
async function storedKey(database, name, candidate = null) {
  const db = await openKeyDatabase(database);
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(DPOP_STORE, candidate ? "readwrite" : "readonly");
      const store = tx.objectStore(DPOP_STORE);
      let result = null;
      const read = store.get(name);
      read.onsuccess = () => {
        result = isKeyRecord(read.result) ? read.result : null;
        if (!result && candidate) {
          store.put(candidate, name);
          result = candidate;
        }
      };
      tx.oncomplete = () => resolve(result);
      tx.onerror = tx.onabort = () => reject(tx.error || new Error("IndexedDB transaction failed"));
    });
  } finally {
    db.close();
  }
}

async function forgetStoredKey(database, name) {
  const db = await openKeyDatabase(database);
  try {
    await new Promise((resolve, reject) => {
      const tx = db.transaction(DPOP_STORE, "readwrite");
      tx.objectStore(DPOP_STORE).delete(name);
      tx.oncomplete = () => resolve();
      tx.onerror = tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

// ---------------------------------------------------------------- the tabs' marker

/**
 * The newest token of a lock name, as every tab can read it: {sessionId, jti, until} (no
 * secret). IndexedDB commits are ordered across the tabs of an origin, so a holder that wrote
 * it before releasing the Web Lock is seen by the next holder, which a BroadcastChannel
 * message is not (it may arrive after the lock, or never: the tab opened after it was sent).
 */
function markerRequest(database, mode, use) {
  return new Promise((resolve, reject) => {
    const opening = indexedDB.open(database, 1);
    opening.onupgradeneeded = () => opening.result.createObjectStore("markers");
    opening.onerror = () => reject(opening.error);
    opening.onblocked = () => reject(new Error("IndexedDB blocked"));
    opening.onsuccess = () => {
      const db = opening.result;
      const tx = db.transaction("markers", mode);
      const request = use(tx.objectStore("markers"));
      tx.oncomplete = () => {
        db.close();
        resolve(request.result);
      };
      tx.onerror = tx.onabort = () => {
        db.close();
        reject(tx.error || new Error("IndexedDB transaction failed"));
      };
    };
  });
}

/** The error a DPoP-aware server gives: our JSON envelope's code, else the challenge's. */
function challengeError(response) {
  const header = response.headers.get("WWW-Authenticate") || "";
  const match = /\bDPoP\b.*?\berror="([^"]*)"/i.exec(header);
  return match ? match[1] : null;
}

// ---------------------------------------------------------------- shared within a page

/**
 * What the clients of one page share (module copies included, hence the global symbol):
 * per lock name, the queue that serialises their refreshes before the cross-tab lock, and the
 * newest token response any of them received. A client that gets the lock after another one
 * of this page refreshed reads that response here, synchronously, instead of hoping the
 * BroadcastChannel message has arrived first (it often had not: a second rotation).
 */
const realm = (() => {
  const key = Symbol.for("authsvc.client.realm");
  const holder = /** @type {any} */ (globalThis);
  if (!holder[key]) holder[key] = { queues: new Map(), latest: new Map() };
  return holder[key];
})();

/**
 * @typedef {object} Session
 * @property {string} id the session's id
 * @property {string} idle_expires_at ISO 8601, server time: the idle deadline (slides with use)
 * @property {string} absolute_expires_at ISO 8601, server time: the session's fixed end
 * @property {string} refresh_after ISO 8601: when the client refreshes silently (if in use)
 * @property {string | null} expires_at ISO 8601: the access token's expiry
 */

/**
 * @typedef {"session_expired" | "session_revoked" | "refresh_token_reused" | "refresh_token_invalid" | "csrf_failed" | "invalid_dpop_proof" | "dpop_unsupported" | "logged_out"} SessionEndReason
 */

/**
 * @typedef {object} SessionEnd
 * @property {SessionEndReason} reason why the session ended (see the list above)
 * @property {string | null} sessionId
 */

/**
 * @typedef {object} RetryInfo
 * @property {number} attempt 0 for the first failure
 * @property {number} delayMs the wait before the next attempt (Retry-After when the service gave one)
 * @property {number | null} status the HTTP status (429, 503...), null for a network error
 */

/**
 * @typedef {object} DPoPOptions
 * @property {string} [storageName] the key's record name (default "<name>:<service base URL>/")
 * @property {string} [databaseName] the IndexedDB database (default "<name>-dpop")
 * @property {boolean} [newKeyAfterLogout] delete the key at logout (the next login makes one)
 */

/**
 * @typedef {object} StorageLike
 * @property {(key: string) => string | null} getItem
 * @property {(key: string, value: string) => void} setItem
 * @property {(key: string) => void} removeItem
 */

/**
 * @typedef {object} SecondFactor exactly one of the three
 * @property {string} [code] the authenticator app's current 6-digit code
 * @property {string} [recoveryCode] one of the account's recovery codes
 * @property {boolean} [passkey] true: ask the browser for one of the account's passkeys
 */

/**
 * @typedef {object} StepUp
 * @property {string} acr "mfa"
 * @property {string[]} amr the session's authentication methods (RFC 8176)
 * @property {string} acrExpiresAt when the raised acr falls back (ISO 8601)
 */

/**
 * @typedef {object} AuthClientOptions
 * @property {string} [baseUrl] where authsvc lives ("" = this origin)
 * @property {"cookie" | "bearer"} [transport] "cookie" (default): the refresh token stays in an
 *   HttpOnly cookie; "bearer": the client holds it (in memory, or in `storage`)
 * @property {string} [name] namespace of everything two applications on one origin could share:
 *   lock "<name>-refresh", channel "<name>", IndexedDB "<name>-dpop", storage key "<name>:refresh"
 * @property {string} [lockName] the Web Lock (default "<name>-refresh")
 * @property {string} [channelName] the BroadcastChannel (default "<name>")
 * @property {string} [csrfCookie] the CSRF cookie the service sets (default "__Host-csrf_token")
 * @property {StorageLike | null} [storage] bearer transport: where to keep the refresh token so
 *   that reloads and new tabs find it (e.g. sessionStorage); default: memory only
 * @property {string} [storageKey] its key in `storage` (default "<name>:refresh")
 * @property {boolean | DPoPOptions} [dpop] bind the session to a key of this browser (RFC 9449)
 * @property {(end: SessionEnd) => void} [onSessionEnd] every session end, once per session
 * @property {(end: SessionEnd) => void} [onSessionExpired] the end was the idle or absolute deadline
 * @property {(end: SessionEnd) => void} [onLogout] any other end (logout here or in another tab,
 *   revocation, reuse detection, cookies cleared)
 * @property {(session: Session) => void} [onRefresh] a refresh (here or in another tab) gave new tokens
 * @property {(session: Session | null) => void} [onChange] new tokens or deadlines; null at the end
 * @property {(retry: RetryInfo) => void} [onRetry] a refresh could not reach the service (or it
 *   answered 429/5xx): retried after `delayMs`; never a session end
 * @property {typeof fetch} [fetch] the fetch to use (default: the global one)
 */

/**
 * @typedef {object} SocketCallbacks
 * @property {() => void} [onOpen]
 * @property {(message: any, event: MessageEvent) => void} [onMessage]
 * @property {(close: { code: number, reason: string, final: boolean }) => void} [onClose]
 */

/**
 * @typedef {object} AuthSocket
 * @property {(data: any) => boolean} send objects as JSON; false when not connected
 * @property {() => void} close
 * @property {"connecting" | "open" | "reconnecting" | "closed"} state
 * @property {number} connections
 * @property {number} renewals
 */

/**
 * @typedef {object} SecondFactor exactly one of the three
 * @property {string} [code] the authenticator app's current 6-digit code
 * @property {string} [recoveryCode] one of the account's recovery codes
 * @property {boolean} [passkey] true: ask the browser for one of the account's passkeys
 */

/**
 * @typedef {object} StepUp
 * @property {string} acr "mfa"
 * @property {string[]} amr the session's authentication methods (RFC 8176)
 * @property {string} acrExpiresAt when the raised acr falls back (ISO 8601)
 */

/**
 * @typedef {object} AuthClient
 * @property {Promise<Session | null>} ready settles once the page-load refresh has an outcome:
 *   the session, or null when there is none (never null because of a network error or a 429)
 * @property {(email: string, password: string, deviceName?: string) => Promise<Session>} login
 *   rejects with AuthError "mfa_required" (its `detail` holds the challenge) for an account
 *   with a second factor
 * @property {(challenge: string, factor: SecondFactor) => Promise<Session>} loginMfa the
 *   second step of a two-step login
 * @property {(factor: SecondFactor) => Promise<StepUp>} stepUp prove a second factor again
 * @property {(passkey: {password: string, name?: string}) => Promise<any>} registerPasskey add a
 *   passkey to the account (navigator.credentials.create)
 * @property {(options?: {deviceName?: string}) => Promise<Session>} loginWithPasskey a
 *   passwordless login (navigator.credentials.get)
 * @property {() => Promise<void>} logout
 * @property {(input: RequestInfo | URL, init?: RequestInit) => Promise<Response>} fetch
 * @property {() => Promise<any>} status GET /auth/session-status (does not slide the session)
 * @property {() => Promise<Session | null>} refresh
 * @property {() => string | null} accessToken
 * @property {() => Session | null} session
 * @property {() => Promise<string | null>} dpopThumbprint
 * @property {(url: string | URL, callbacks?: SocketCallbacks) => AuthSocket} socket
 * @property {() => void} close
 */

// WebAuthn's JSON forms (the service speaks them) to the browser's, and back: the browser's own
// parse*FromJSON and toJSON where it has them, else by hand (base64url <-> bytes).
const b64urlToBytes = (text) =>
  Uint8Array.from(atob(text.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
const bytesToB64url = (buffer) =>
  btoa(String.fromCharCode(...new Uint8Array(buffer)))
    .replace(/\+/g, "-")
    .replace(/\//g, "_")
    .replace(/=+$/, "");
const withIds = (list) => (list || []).map((c) => ({ ...c, id: b64urlToBytes(c.id) }));

function creationOptions(json) {
  if (typeof PublicKeyCredential.parseCreationOptionsFromJSON === "function") {
    return PublicKeyCredential.parseCreationOptionsFromJSON(json);
  }
  return {
    ...json,
    challenge: b64urlToBytes(json.challenge),
    user: { ...json.user, id: b64urlToBytes(json.user.id) },
    excludeCredentials: withIds(json.excludeCredentials),
  };
}

function requestOptions(json) {
  if (typeof PublicKeyCredential.parseRequestOptionsFromJSON === "function") {
    return PublicKeyCredential.parseRequestOptionsFromJSON(json);
  }
  return { ...json, challenge: b64urlToBytes(json.challenge), allowCredentials: withIds(json.allowCredentials) };
}

function credentialJson(credential) {
  if (typeof credential.toJSON === "function") return credential.toJSON();
  const r = credential.response;
  const response = { clientDataJSON: bytesToB64url(r.clientDataJSON) };
  if (r.attestationObject) {
    response.attestationObject = bytesToB64url(r.attestationObject);
    response.transports = typeof r.getTransports === "function" ? r.getTransports() : [];
  } else {
    response.authenticatorData = bytesToB64url(r.authenticatorData);
    response.signature = bytesToB64url(r.signature);
    if (r.userHandle) response.userHandle = bytesToB64url(r.userHandle);
  }
  return {
    id: credential.id,
    rawId: bytesToB64url(credential.rawId),
    type: credential.type,
    response,
    clientExtensionResults: credential.getClientExtensionResults(),
    authenticatorAttachment: credential.authenticatorAttachment || undefined,
  };
}

/**
 * @param {AuthClientOptions} [options]
 * @returns {AuthClient}
 */
export function createAuthClient(options = {}) {
  const {
    baseUrl = "",
    transport = "cookie",
    name = DEFAULT_NAME,
    csrfCookie = CSRF_COOKIE,
    storage = null,
    onSessionEnd,
    onSessionExpired,
    onLogout,
    onRefresh,
    onChange,
    onRetry,
    dpop = false,
  } = options;
  if (transport !== "cookie" && transport !== "bearer") {
    throw new TypeError(`transport must be "cookie" or "bearer", not ${JSON.stringify(transport)}`);
  }
  const bearer = transport === "bearer";
  const lockName = String(options.lockName || `${name}-refresh`);
  const channelName = String(options.channelName || name);
  const storageKey = String(options.storageKey || `${name}:refresh`);
  const fetch = (...args) => (options.fetch || globalThis.fetch)(...args);
  const base = String(baseUrl || "").replace(/\/+$/, "");
  const dpopOptions = dpop ? { ...(typeof dpop === "object" ? dpop : {}) } : null;
  const channel = typeof BroadcastChannel === "function" ? new BroadcastChannel(channelName) : null;
  const tabId = Math.random().toString(36).slice(2);
  let refreshToken = null; // bearer transport only (see setRefreshToken)

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
  const retired = new Set(); // access tokens replaced here (see retire())
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
    return readCookie(csrfCookie) || csrfFromBody;
  }

  function cookieHeaders(extra = {}) {
    const headers = { "Content-Type": "application/json", ...extra };
    if (!bearer) headers["Session-Transport"] = "cookie";
    return headers;
  }

  // Cookie transport sends the cookies; bearer sends none (the body holds the refresh token).
  const credentials = bearer ? "omit" : "include";

  function readStored() {
    try {
      return (storage && storage.getItem(storageKey)) || null;
    } catch {
      return null; // storage refused (privacy mode): memory only
    }
  }

  /** Bearer transport: the refresh token, kept in memory and, if asked, in `storage`. */
  function setRefreshToken(token) {
    refreshToken = token || null;
    try {
      if (storage && token) storage.setItem(storageKey, token);
      else if (storage) storage.removeItem(storageKey);
    } catch {
      // storage full or refused: memory only
    }
  }

  /** What proves the session to /auth/refresh: the CSRF cookie's token, or the refresh token. */
  function refreshCredential() {
    if (!bearer) return csrfToken();
    return readStored() || refreshToken;
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

  // ---------------------------------------------------------------- DPoP

  // One key per browser and service: every tab of the origin reads the same record.
  const keyName = dpopOptions
    ? String(dpopOptions.storageName || `${name}:${absolute(base + "/").href}`)
    : null;
  const keyDatabase = dpopOptions ? String(dpopOptions.databaseName || `${name}-dpop`) : null;
  let cachedKey = null; // the last record read (API calls use it while it matches the token)
  let memoryKey = null; // only where IndexedDB fails: this page's own key, lost on reload
  const skews = new Map(); // origin -> its clock minus ours, where its Date shows them apart
  const nonces = new Map(); // origin -> the latest DPoP-Nonce it sent (RFC 9449 §8)

  function absolute(target) {
    const where = typeof target === "string" || target instanceof URL ? target : target.url;
    return new URL(String(where), typeof location !== "undefined" ? location.href : undefined);
  }

  /** The key from IndexedDB (created on first use), read afresh: another tab may have reset it. */
  async function loadKey() {
    if (typeof crypto === "undefined" || !crypto.subtle) {
      throw new AuthError("dpop_unsupported", "DPoP needs WebCrypto (a secure context)");
    }
    if (!memoryKey) {
      try {
        cachedKey =
          (await storedKey(keyDatabase, keyName)) ||
          (await storedKey(keyDatabase, keyName, await newKeyRecord()));
        return cachedKey;
      } catch {
        // No IndexedDB here (a privacy mode, storage disabled): fall back to a key in memory.
      }
    }
    memoryKey = memoryKey || (await newKeyRecord());
    cachedKey = memoryKey;
    return cachedKey;
  }

  /** The key for a token bound to `jkt` (any key when none is known yet). */
  async function keyFor(jkt) {
    if (cachedKey && (!jkt || cachedKey.jkt === jkt)) return cachedKey;
    return loadKey();
  }

  async function proofFor(method, target, { token = null, fresh = false } = {}) {
    const key = fresh ? await loadKey() : await keyFor(state && state.jkt);
    const where = absolute(target);
    const claims = {
      jti: base64url(crypto.getRandomValues(new Uint8Array(18))),
      htm: method.toUpperCase(),
      htu: where.origin + where.pathname, // no query, no fragment (RFC 9449 §4.2)
      iat: Math.floor((now() + (skews.get(where.origin) || 0)) / 1000),
    };
    if (token) claims.ath = await sha256(token);
    const nonce = nonces.get(where.origin);
    if (nonce) claims.nonce = nonce;
    const input = `${base64urlJson({ typ: "dpop+jwt", alg: "ES256", jwk: key.jwk })}.${base64urlJson(claims)}`;
    const signature = await crypto.subtle.sign(DPOP_SIGNATURE, key.privateKey, encoder.encode(input));
    return `${input}.${base64url(signature)}`;
  }

  /** Learn the server's nonce and, when far from ours, its clock. */
  function noteServer(response, origin) {
    const nonce = response.headers.get("DPoP-Nonce");
    if (nonce) nonces.set(origin, nonce);
    const date = Date.parse(response.headers.get("Date") || "");
    if (Number.isFinite(date)) {
      const offset = date + 500 - now(); // Date is whole seconds, rounded down
      if (Math.abs(offset) > CLOCK_SKEW_MS) skews.set(origin, offset);
      else skews.delete(origin);
    }
  }

  /**
   * `send(extraHeaders)` with a fresh proof for `method target` in `DPoP` (no proof outside
   * DPoP mode). Once more, with a new proof, when the server asks for a nonce it has just
   * given, or refused a proof whose iat our clock got wrong (its Date header showed that).
   */
  async function withProof(method, target, options, send) {
    if (!dpopOptions) return send({});
    const origin = absolute(target).origin;
    for (let attempt = 0; ; attempt += 1) {
      const skewBefore = skews.get(origin);
      const response = await send({ DPoP: await proofFor(method, target, options) });
      noteServer(response, origin);
      if (attempt > 0 || (response.status !== 400 && response.status !== 401)) return response;
      const code = (await errorCode(response)).code || challengeError(response);
      const nonceGiven = code === "use_dpop_nonce" && response.headers.has("DPoP-Nonce");
      const clockFixed = code === "invalid_dpop_proof" && skews.get(origin) !== skewBefore;
      if (!nonceGiven && !clockFixed) return response;
    }
  }

  /** Authorization for a token: DPoP when the server bound it to our key, else Bearer. */
  function authHeaders(current) {
    return { Authorization: `${current.tokenType} ${current.access}` };
  }

  /** `send(headers)` with the token's Authorization (and its proof when bound). */
  function withToken(method, target, current, send) {
    const headers = authHeaders(current);
    if (current.tokenType !== "DPoP") return send(headers);
    return withProof(method, target, { token: current.access }, (extra) => send({ ...headers, ...extra }));
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
  function accept(body, receivedAt, { broadcast, source = "login" }) {
    const claims = decodeJwt(body.access_token) || {};
    const ttlMs = Math.max(1, Number(body.expires_in) || 0) * 1000;
    const serverOffset =
      typeof claims.iat === "number" ? receivedAt - claims.iat * 1000 : 0;
    const toLocal = (iso) => Date.parse(iso) + serverOffset;
    const expiresLocal = receivedAt + usableFor(ttlMs);
    const previous = state;
    if (previous && previous.access !== body.access_token) retire(previous.access);
    state = {
      access: body.access_token,
      body,
      sessionId: String(body.session.id),
      receivedAt,
      serverOffset,
      exp: typeof claims.exp === "number" ? claims.exp : null,
      // The server decides: a token bound to our key (cnf.jkt) is sent as DPoP, others as Bearer.
      tokenType: dpopOptions && /^dpop$/i.test(String(body.token_type)) ? "DPoP" : "Bearer",
      jkt: claims.cnf && typeof claims.cnf.jkt === "string" ? claims.cnf.jkt : null,
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
    if (bearer && typeof body.refresh_token === "string" && body.refresh_token) {
      if (broadcast) setRefreshToken(body.refresh_token);
      else refreshToken = body.refresh_token; // the peer that received it stored it
    }
    active = false;
    schedule();
    if (broadcast) {
      // Before the lock is released: the page's next holder reads this synchronously.
      realm.latest.set(channelName, { body, receivedAt, from: tabId });
      post({ type: "token", body, age: now() - receivedAt, source });
    }
    // A refresh waiting out a backoff (or Retry-After) looks again now: a peer's token or a
    // login ends the wait, and with it `ready`'s.
    if (inflight) wakeSleepers();
    if (!previous || previous.access !== state.access) {
      for (const live of [...sockets]) live.renew();
      call(onChange, sessionView());
      if (source === "refresh") call(onRefresh, sessionView());
    }
  }

  /**
   * Tokens this client has moved past: a late broadcast of one (its exp may equal the newer
   * one's, exp being whole seconds) must not bring it back.
   */
  function retire(token) {
    retired.add(token);
    if (retired.size > 16) retired.delete(retired.values().next().value);
  }

  /**
   * How long a token of `ttlMs` is used from its receipt: expires_in counts from iat, which
   * is rounded down, so up to a second of its life may be gone; a further margin covers the
   * request's trip to the server.
   */
  function usableFor(ttlMs) {
    return Math.max(ttlMs / 2, ttlMs - 1000 - Math.min(1000, ttlMs / 10));
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
    forgetShared(id);
    if (bearer) setRefreshToken(null);
    for (const live of [...sockets]) live.end(reason);
    const key = id || "no-session";
    if (!fromPeer && id) {
      post({ type: "end", reason, sessionId: id });
      clearMarker();
    }
    if (!endedSessions.has(key)) {
      endedSessions.add(key);
      const end = { reason, sessionId: id };
      call(onSessionEnd, end);
      call(reason === "session_expired" ? onSessionExpired : onLogout, end);
    }
    if (had) call(onChange, null);
  }

  const markerDatabase = `${name}-sync`;
  const hasIndexedDb = () => typeof indexedDB !== "undefined" && indexedDB !== null;

  function tokenId(token) {
    const jti = token ? (decodeJwt(token) || {}).jti : null;
    return typeof jti === "string" ? jti : null;
  }

  /** Inside the lock, after a new token: tell the tabs that come next (awaited: see above). */
  async function publishMarker() {
    if (!hasIndexedDb() || !state || !tokenId(state.access)) return;
    const marker = { sessionId: state.sessionId, jti: tokenId(state.access), until: state.expiresLocal };
    try {
      await markerRequest(markerDatabase, "readwrite", (store) => store.put(marker, lockName));
    } catch {
      // No IndexedDB here: the broadcast alone tells the others.
    }
  }

  function clearMarker() {
    if (!hasIndexedDb()) return;
    markerRequest(markerDatabase, "readwrite", (store) => store.delete(lockName)).catch(() => {});
  }

  /**
   * Holding the lock with nothing newer in hand: did another tab get a token that is still
   * usable (and that this client has not moved past)? Then ask the tabs for it, and adopt
   * it if one answers in time.
   */
  async function adoptFromTabs(stale) {
    if (!hasIndexedDb() || !channel) return false;
    let marker;
    try {
      marker = await markerRequest(markerDatabase, "readonly", (store) => store.get(lockName));
    } catch {
      return false;
    }
    if (!marker || typeof marker.jti !== "string" || now() >= marker.until) return false;
    if (state && state.sessionId !== marker.sessionId) return false;
    if (marker.jti === tokenId(stale) || (state && marker.jti === tokenId(state.access))) return false;
    if (endedSessions.has(marker.sessionId)) return false;
    for (const token of retired) if (tokenId(token) === marker.jti) return false;
    if (!(await othersAlive())) return false; // a lone tab's reload: nobody to ask
    post({ type: "want-token", jti: marker.jti });
    const giveUp = now() + PEER_TOKEN_WAIT_MS;
    while (!(state && tokenId(state.access) === marker.jti && tokenUsable()) && now() < giveUp) {
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
    return Boolean(state && tokenId(state.access) === marker.jti && tokenUsable());
  }

  // Presence: each client holds a Web Lock of its own while it lives, so a client can tell
  // whether any other is there to answer before it waits for one.
  const presence = `${lockName}#${tabId}`;
  let leave = null;
  if (typeof navigator !== "undefined" && navigator.locks && navigator.locks.request) {
    navigator.locks
      .request(presence, () => new Promise((resolve) => {
        leave = resolve;
      }))
      .catch(() => {});
  }

  async function othersAlive() {
    if (typeof navigator === "undefined" || !navigator.locks || !navigator.locks.query) return true;
    try {
      const { held = [] } = await navigator.locks.query();
      return held.some((lock) => lock.name && lock.name.startsWith(`${lockName}#`) && lock.name !== presence);
    } catch {
      return true;
    }
  }

  /** The page's shared token record must not outlive its session. */
  function forgetShared(sessionId) {
    const shared = realm.latest.get(channelName);
    if (shared && (!sessionId || String(shared.body.session.id) === sessionId)) {
      realm.latest.delete(channelName);
    }
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

  /**
   * `fn` alone: first among this page's clients of the same lock name (a queue, so a page
   * without Web Locks is single-flight too), then across tabs.
   */
  function withRefreshLock(fn, early = () => null) {
    const before = realm.queues.get(lockName) || Promise.resolve();
    // `early` may settle the turn without the cross-tab lock (whose wait, or the fallback's
    // tie-breaking pause, would otherwise be paid by every client of the page in turn).
    const turn = before.then(() => early() || crossTabLock(fn));
    // The next waits for this turn, but never longer than a stuck holder is waited for.
    const settled = turn.then(
      () => {},
      () => {},
    );
    let timer;
    const bounded = Promise.race([
      settled,
      new Promise((resolve) => {
        timer = setTimeout(resolve, LOCK_WAIT_MS);
      }),
    ]).finally(() => clearTimeout(timer));
    realm.queues.set(lockName, bounded);
    settled.then(() => {
      if (realm.queues.get(lockName) === bounded) realm.queues.delete(lockName);
    });
    return turn;
  }

  function crossTabLock(fn) {
    if (typeof navigator !== "undefined" && navigator.locks && navigator.locks.request) {
      let signal;
      if (typeof AbortSignal !== "undefined" && AbortSignal.timeout) {
        signal = AbortSignal.timeout(LOCK_WAIT_MS);
      }
      return navigator.locks
        .request(lockName, signal ? { signal } : {}, fn)
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
          if (state.access === body.access_token || retired.has(body.access_token)) break;
          if (state.exp !== null && typeof exp === "number" && exp < state.exp) break;
        }
        if (loggingOut && loggingOut.sessionId === id) break;
        accept(body, now() - Math.max(0, Number(message.age) || 0), {
          broadcast: false,
          source: message.source === "login" ? "login" : "refresh",
        });
        break;
      }
      case "want-token":
        // A tab that holds the lock asks for the token the marker names: whoever has it answers.
        if (state && tokenUsable() && tokenId(state.access) === message.jti) {
          post({ type: "token", body: state.body, age: now() - state.receivedAt, source: "refresh" });
        }
        return;
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
    const credential = refreshCredential();
    if (!credential) return { kind: "no-cookie" };
    let response;
    try {
      // In DPoP mode every refresh carries a proof by the stored key: the key that a bound
      // session (and its refresh cookie) demands.
      response = await withProof("POST", url("/auth/refresh"), { fresh: true }, (extra) =>
        fetch(url("/auth/refresh"), {
          method: "POST",
          credentials,
          cache: "no-store",
          headers: cookieHeaders(bearer ? extra : { "X-CSRF-Token": credential, ...extra }),
          body: bearer ? JSON.stringify({ refresh_token: credential }) : "{}",
          signal: timeoutSignal(REQUEST_TIMEOUT_MS),
        }),
      );
    } catch (error) {
      if (error instanceof AuthError) return { kind: "end", reason: error.code };
      return { kind: "transient", error, status: null, retryAfterMs: 0 };
    }
    const receivedAt = now();
    if (response.ok) {
      try {
        return { kind: "ok", body: await response.json(), receivedAt };
      } catch (error) {
        return { kind: "transient", error, status: response.status, retryAfterMs: 0 };
      }
    }
    const { code } = await errorCode(response);
    if (isTransient(response.status)) {
      // 429 (the per-session refresh limit) and 503 say when to come back: a live session
      // that was asked to wait, never a logout.
      return {
        kind: "transient",
        error: new TypeError(`refresh answered ${response.status}`),
        status: response.status,
        retryAfterMs: retryAfter(response),
      };
    }
    // Another tab or request refreshed first, and its answer left the newer token in the
    // cookie jar: not a session end.
    if (code === SUPERSEDED_CODE) return { kind: "newer" };
    // A nonce that lapsed between the retry and its answer: try again with the newest.
    if (code === "use_dpop_nonce") {
      const error = new TypeError("refresh needs a newer DPoP nonce");
      return { kind: "transient", error, status: response.status, retryAfterMs: 0 };
    }
    if (response.status === 401) return { kind: "end", reason: code || "refresh_token_invalid" };
    if (response.status === 403) return { kind: "end", reason: code || "csrf_failed" };
    return { kind: "end", reason: code || `http_${response.status}` };
  }

  /** Retry-After in ms (delta-seconds or an HTTP date), capped; 0 when absent. */
  function retryAfter(response) {
    const value = (response.headers.get("Retry-After") || "").trim();
    if (!value) return 0;
    const ms = /^\d+$/.test(value) ? Number(value) * 1000 : Date.parse(value) - now();
    return Number.isFinite(ms) ? Math.min(MAX_RETRY_AFTER_MS, Math.max(0, ms)) : 0;
  }

  /**
   * A token response another client of this page received for this session (or any, while
   * we have none) that is newer than ours and still usable: adopt it instead of rotating.
   */
  function adoptShared(stale) {
    const shared = realm.latest.get(channelName);
    if (!shared || shared.from === tabId) return false;
    const id = String(shared.body.session.id);
    if (endedSessions.has(id) || (loggingOut && loggingOut.sessionId === id)) return false;
    if (shared.body.access_token === stale || retired.has(shared.body.access_token)) return false;
    if (state && state.sessionId !== id) return false;
    const exp = (decodeJwt(shared.body.access_token) || {}).exp;
    if (state && state.exp !== null && !(typeof exp === "number" && exp > state.exp)) return false;
    const ttlMs = Math.max(1, Number(shared.body.expires_in) || 0) * 1000;
    if (now() >= shared.receivedAt + usableFor(ttlMs)) return false;
    accept(shared.body, shared.receivedAt, { broadcast: false, source: "refresh" });
    return true;
  }

  /**
   * Refresh with retries, single-flight across tabs. `stale` is the access token we want
   * replaced: if, once we hold the lock, the current token is a different one that is still
   * usable (a peer refreshed and broadcast it, or a client of this page left it in the
   * shared record), we adopt it and make no request.
   */
  async function refreshLoop(stale) {
    const started = epoch;
    const settled = () => {
      if (epoch !== started) return { kind: "superseded" };
      if (state && state.access !== stale && tokenUsable()) return { kind: "adopted" };
      if (adoptShared(stale)) return { kind: "adopted" };
      return null;
    };
    for (let attempt = 0; !closed; attempt += 1) {
      const outcome = await withRefreshLock(async () => {
        await sleep(0); // let a message posted by the previous holder arrive first
        const done = settled();
        if (done) return done;
        if (await adoptFromTabs(stale)) return settled() || { kind: "adopted" };
        if (epoch !== started) return { kind: "superseded" };
        const result = await refreshRequest();
        if (epoch !== started) return { kind: "superseded" };
        // Accept inside the lock so peers get the broadcast before they get the lock.
        if (result.kind === "ok") {
          accept(result.body, result.receivedAt, { broadcast: true, source: "refresh" });
          await publishMarker();
        }
        return result;
      }, settled);
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
        default: {
          // transient: keep the session, try again (after Retry-After when there is one)
          const delayMs = Math.max(backoff(attempt), outcome.retryAfterMs || 0);
          call(onRetry, { attempt, delayMs, status: outcome.status ?? null });
          await sleep(delayMs);
        }
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
    const device = bearer && storage ? readItem(`${storageKey}:device`) : null;
    if (device) payload.device_token = device; // exempts this client from the account lockout
    return signIn("/auth/login", payload);
  }

  /**
   * The second step of a two-step login: the challenge of login()'s "mfa_required" error,
   * answered with the authenticator app's code or a recovery code (docs/mfa.md). In DPoP mode
   * the proof is by the same stored key as the first step's, as the service requires.
   */
  async function loginMfa(challenge, { code, recoveryCode, passkey } = {}) {
    const payload = { challenge, ...factorPayload({ code, recoveryCode }) };
    if (passkey) {
      const options = await publicPost("/auth/login/mfa/passkey-options", { challenge });
      payload.passkey = await assertPasskey(options);
    }
    return signIn("/auth/login/mfa", payload);
  }

  /** POST a login step; a token pair starts the session here and in every tab. */
  async function signIn(path, payload) {
    return withRefreshLock(async () => {
      // DPoP mode: the proof binds the new session (and its refresh cookie) to the stored key.
      const response = await withProof("POST", url(path), { fresh: true }, (extra) =>
        fetch(url(path), {
          method: "POST",
          credentials,
          cache: "no-store",
          headers: cookieHeaders(extra),
          body: JSON.stringify(payload),
          signal: timeoutSignal(3 * REQUEST_TIMEOUT_MS),
        }),
      );
      const receivedAt = now();
      if (!response.ok) {
        const { code, message } = await errorCode(response);
        throw new AuthError(code || `http_${response.status}`, message, response.status);
      }
      const body = await response.json();
      if (response.status === 202 && body.mfa_required) {
        throw new AuthError(
          "mfa_required",
          "The password was right; the account has a second factor: call loginMfa(challenge, " +
            "{ code } or { recoveryCode }) before the challenge expires.",
          202,
          { challenge: body.challenge, methods: body.methods, expiresIn: body.expires_in },
        );
      }
      if (!bearer && cookiesDropped()) {
        await revokeOrphan(body);
        throw new AuthError(
          "cookies_not_stored",
          `Logged in, but this browser did not store the session cookies (${csrfCookie} is ` +
            "missing), so the session could not survive a reload or a token expiry. Secure " +
            "cookies need HTTPS (some engines, e.g. WebKitGTK, refuse them on http://localhost) " +
            "and cookies must not be blocked for this site.",
          response.status,
        );
      }
      if (bearer && storage && typeof body.device_token === "string" && body.device_token) {
        writeItem(`${storageKey}:device`, body.device_token);
      }
      epoch += 1;
      loggingOut = null;
      accept(body, receivedAt, { broadcast: true });
      await publishMarker();
      return sessionView();
    });
  }

  /**
   * Prove a second factor again inside the session (POST /auth/step-up): its acr is "mfa" for
   * the service's STEP_UP_TTL, and the new access token (which says so) replaces this one in
   * every tab. Resolves with {acr, amr, acrExpiresAt}; rejects with an AuthError
   * ("invalid_mfa_code", "mfa_not_enabled", "rate_limited", ...).
   */
  async function stepUp({ code, recoveryCode, passkey } = {}) {
    if (!tokenUsable()) await refresh();
    if (!state) throw new AuthError("not_authenticated", "No session to step up.");
    const current = state;
    let payload;
    if (passkey) {
      const options = await (await sessionPost("/auth/step-up/passkey-options", {})).json();
      payload = { passkey: await assertPasskey(options) };
    } else {
      payload = factorPayload({ code, recoveryCode });
    }
    const response = await sessionPost("/auth/step-up", payload);
    const receivedAt = now();
    const body = await response.json();
    if (state && state.sessionId === current.sessionId) {
      const raised = {
        ...state.body,
        access_token: body.access_token,
        token_type: body.token_type,
        expires_in: body.expires_in,
      };
      accept(raised, receivedAt, { broadcast: true, source: "step_up" });
    }
    return { acr: body.acr, amr: body.amr, acrExpiresAt: body.acr_expires_at };
  }

  /**
   * Register a passkey for the account (POST /auth/passkeys/register/options with the
   * password, navigator.credentials.create(), POST /auth/passkeys). Resolves with the passkey
   * ({id, name, created_at, ...}); rejects with an AuthError, or the browser's DOMException
   * when the user cancels.
   */
  async function registerPasskey({ password, name } = {}) {
    if (!tokenUsable()) await refresh();
    if (!state) throw new AuthError("not_authenticated", "No session to add a passkey to.");
    const payload = { password: String(password) };
    if (name) payload.name = String(name);
    const ceremony = await (await sessionPost("/auth/passkeys/register/options", payload)).json();
    const created = await navigator.credentials.create({
      publicKey: creationOptions(ceremony.options),
    });
    const response = await sessionPost("/auth/passkeys", {
      ceremony: ceremony.ceremony,
      credential: credentialJson(created),
    });
    return response.json();
  }

  /** Log in with a passkey alone (a discoverable credential, user verification). */
  async function loginWithPasskey({ deviceName } = {}) {
    const options = await publicPost("/auth/passkeys/login/options", {});
    const payload = await assertPasskey(options);
    if (deviceName) payload.device_name = deviceName;
    return signIn("/auth/passkeys/login", payload);
  }

  function factorPayload({ code, recoveryCode }) {
    const payload = {};
    if (code !== undefined) payload.code = String(code);
    if (recoveryCode !== undefined) payload.recovery_code = String(recoveryCode);
    return payload;
  }

  /** {ceremony, credential}: the browser's answer to the service's request options. */
  async function assertPasskey(ceremony) {
    const asserted = await navigator.credentials.get({
      publicKey: requestOptions(ceremony.options),
    });
    return { ceremony: ceremony.ceremony, credential: credentialJson(asserted) };
  }

  /** POST with the session's access token (Bearer or DPoP); rejects with an AuthError. */
  async function sessionPost(path, payload) {
    const response = await withToken("POST", url(path), state, (headers) =>
      fetch(url(path), {
        method: "POST",
        credentials: "omit",
        cache: "no-store",
        headers: { "Content-Type": "application/json", ...headers },
        body: JSON.stringify(payload),
        signal: timeoutSignal(REQUEST_TIMEOUT_MS),
      }),
    );
    if (!response.ok) {
      const { code, message } = await errorCode(response);
      throw new AuthError(code || `http_${response.status}`, message, response.status);
    }
    return response;
  }

  /** POST without a session (a login's ceremony options); resolves with the JSON body. */
  async function publicPost(path, payload) {
    const response = await fetch(url(path), {
      method: "POST",
      credentials: "omit",
      cache: "no-store",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
      signal: timeoutSignal(REQUEST_TIMEOUT_MS),
    });
    if (!response.ok) {
      const { code, message } = await errorCode(response);
      throw new AuthError(code || `http_${response.status}`, message, response.status);
    }
    return response.json();
  }

  /**
   * Right after a cookie login: the service set the CSRF cookie, and where this page can read
   * the service's cookies (same host) it must be there. It is not when the browser refused
   * the cookies (Secure cookies over plain http in some engines, cookies blocked): without
   * them the first refresh would fail as if the user had logged out.
   */
  function cookiesDropped() {
    if (typeof document === "undefined" || typeof location === "undefined") return false;
    let host;
    try {
      host = absolute(url("/")).hostname;
    } catch {
      return false;
    }
    return host === location.hostname && !readCookie(csrfCookie);
  }

  /** Log out a session this browser cannot keep (its cookies were dropped). Best effort. */
  async function revokeOrphan(body) {
    const bound = dpopOptions && /^dpop$/i.test(String(body.token_type));
    const current = { access: body.access_token, tokenType: bound ? "DPoP" : "Bearer" };
    try {
      await withToken("POST", url("/auth/logout"), current, (headers) =>
        fetch(url("/auth/logout"), {
          method: "POST",
          credentials: "omit",
          cache: "no-store",
          headers: { "Content-Type": "application/json", ...headers },
          body: "{}",
          signal: timeoutSignal(REQUEST_TIMEOUT_MS),
        }),
      );
    } catch {
      // The access token lapses soon anyway, and nothing else holds the session.
    }
  }

  function readItem(key) {
    try {
      return storage.getItem(key);
    } catch {
      return null;
    }
  }

  function writeItem(key, value) {
    try {
      storage.setItem(key, value);
    } catch {
      // full or refused
    }
  }

  async function logout() {
    // Bearer transport has no cookie to log out with: it needs a usable access token.
    if (bearer && state && !tokenUsable()) await refresh().catch(() => {});
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
        const withAccess = current && now() < current.expiresLocal && attempt === 0;
        const post = (headers) =>
          fetch(url("/auth/logout"), {
            method: "POST",
            credentials,
            cache: "no-store",
            keepalive: true,
            headers: cookieHeaders({ ...extra, ...headers }),
            body: "{}",
            signal: timeoutSignal(REQUEST_TIMEOUT_MS),
          });
        try {
          const response = withAccess
            ? await withToken("POST", url("/auth/logout"), current, post)
            : await withProof("POST", url("/auth/logout"), {}, post); // the cookie
          if (response.status === 401 && withAccess) continue; // try the cookie
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
    if (dpopOptions && dpopOptions.newKeyAfterLogout) await resetKey();
    if (failure) throw failure;
  }

  async function authFetch(input, init = {}) {
    await ready;
    const target = resolveInput(input);
    // A Request's body can be read once: each attempt (nonce, refresh retries) sends a copy.
    const original = typeof Request === "function" && target instanceof Request ? target : null;
    const method = String(init.method || (original ? original.method : "GET")).toUpperCase();
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
    const send = (current) => {
      const attempt = (extra) => {
        const headers = new Headers(init.headers || (original ? original.headers : undefined));
        for (const [name, value] of Object.entries(extra)) headers.set(name, value);
        return fetch(original ? original.clone() : target, { ...init, headers });
      };
      return current ? withToken(method, target, current, attempt) : attempt({});
    };
    const used = state ? state.access : null;
    let response = await send(state);
    if (response.status === 401 && used) {
      const { code } = await errorCode(response);
      if (code === "token_expired" && !passive) {
        if (state && state.access === used) await withTimeout(refresh(), FETCH_REFRESH_TIMEOUT_MS);
        if (state && state.access !== used) {
          response = await send(state);
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
      response = await withToken("GET", url("/auth/session-status"), state, (headers) =>
        fetch(url("/auth/session-status"), {
          headers,
          cache: "no-store",
          signal: timeoutSignal(REQUEST_TIMEOUT_MS),
        }),
      );
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

  /** Forget the stored key: the next login makes a new one (every tab then reads that). */
  async function resetKey() {
    cachedKey = memoryKey = null;
    try {
      await forgetStoredKey(keyDatabase, keyName);
    } catch {
      // No IndexedDB: the memory key is gone already.
    }
  }

  function close() {
    for (const live of [...sockets]) live.end("closed");
    if (leave) leave();
    const shared = realm.latest.get(channelName);
    if (shared && shared.from === tabId) realm.latest.delete(channelName);
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
    const httpAddress = address.replace(/^ws/, "http"); // a proof's htu names the handshake
    let outbox = Promise.resolve(); // messages waiting behind a proof being signed
    let queued = 0;

    /**
     * A bound token goes with a proof for the handshake's request (GET, the socket's URL in
     * its http(s) form), which takes a moment to sign: until it is out, later messages wait
     * behind it, so the service still sees `authenticate` first and renewals in order.
     */
    function sendToken(token) {
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      const current = ws;
      sent = token;
      sentExp = tokenExp(token);
      if (!(state && state.access === token && state.tokenType === "DPoP")) {
        transmit(current, JSON.stringify({ type: "authenticate", token }));
        return;
      }
      const proof = proofFor("GET", httpAddress, { token }).catch(() => null);
      transmit(current, proof.then((signed) =>
        // Unsigned (no key): sent as is, and the service closes 4400 invalid_dpop_proof.
        JSON.stringify(signed ? { type: "authenticate", token, proof: signed } : { type: "authenticate", token }),
      ));
    }

    /** Send in order: after whatever is still waiting for its proof. */
    function transmit(current, data) {
      if (!queued && !(data instanceof Promise)) {
        current.send(data);
        return;
      }
      queued += 1;
      outbox = outbox
        .then(() => data)
        .then((ready) => {
          if (ws === current && current.readyState === WebSocket.OPEN) current.send(ready);
        })
        .catch(() => {})
        .finally(() => {
          queued -= 1;
        });
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
        transmit(ws, raw || ArrayBuffer.isView(data) ? data : JSON.stringify(data));
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
  if (refreshCredential()) {
    // Unreachable, or asked to wait (429, 503): `ready` waits for the answer, however many
    // retries it takes (onRetry reports each). Null here would show a live session as over.
    inflight = refreshLoop(null).finally(() => {
      inflight = null;
    });
    inflight.then(resolveReady, () => resolveReady(null));
  } else {
    resolveReady(null); // no session cookie (or stored refresh token): nothing to refresh
  }

  return {
    ready,
    login,
    loginMfa,
    loginWithPasskey,
    registerPasskey,
    stepUp,
    logout,
    fetch: authFetch,
    status,
    refresh: () => refresh(),
    accessToken: () => (state ? state.access : null),
    dpopThumbprint: async () => (dpopOptions ? (await loadKey()).jkt : null),
    session: sessionView,
    socket: openSocket,
    close,
  };
}
