// An in-process stand-in for authsvc's token endpoints, for the unit tests only: the browser
// tests (tests/browser) run the package against the real service. It rotates refresh tokens
// strictly (a used one is refused as reused), so a second rotation or a lost token shows.

const encode = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");

export function fakeService({ accessTtl = 60, idleSeconds = 600, absoluteSeconds = 3600 } = {}) {
  let serial = 0;
  const refreshTokens = new Map(); // token -> {sid, used}
  const revoked = new Set();
  const svc = {
    base: "http://svc.test",
    rotations: 0,
    refreshes: 0, // refresh requests received
    calls: [], // "METHOD path [Authorization]"
    script: [], // answers for the next refresh requests: {status, retryAfter} or {network: true}
    expiredAccess: new Set(), // access tokens answered 401 token_expired
    loginCookies: null, // cookie transport: called with the csrf token when login "sets cookies"
    sessionState: "live", // "expired" answers refresh with 401 session_expired
  };

  function issue(sid, { cookie = false } = {}) {
    serial += 1;
    const iat = Math.floor(Date.now() / 1000);
    const access = `${encode({ alg: "none" })}.${encode({ sid, iat, exp: iat + accessTtl, n: serial })}.x`;
    const refresh = `rt-${sid}-${serial}`;
    refreshTokens.set(refresh, { sid, used: false });
    if (svc.expireIssued) svc.expiredAccess.add(access);
    const at = (seconds) => new Date(Date.now() + seconds * 1000).toISOString();
    return {
      access_token: access,
      token_type: "Bearer",
      expires_in: accessTtl,
      refresh_token: cookie ? null : refresh,
      refresh_expires_in: absoluteSeconds,
      refresh_after: at(accessTtl * 0.7),
      session: { id: sid, idle_expires_at: at(idleSeconds), absolute_expires_at: at(absoluteSeconds) },
      ...(cookie ? { csrf_token: `csrf-${sid}` } : {}),
    };
  }

  const json = (status, body, headers = {}) =>
    new Response(body === null ? null : JSON.stringify(body), {
      status,
      headers: { "Content-Type": "application/json", ...headers },
    });
  const error = (status, code, headers) => json(status, { error: { code, message: code } }, headers);

  function sidOf(request) {
    const header = request.headers.get("Authorization") || "";
    const token = header.replace(/^Bearer /, "");
    if (!token) return { code: "not_authenticated" };
    if (svc.expiredAccess.has(token)) return { code: "token_expired" };
    const sid = JSON.parse(Buffer.from(token.split(".")[1], "base64url").toString()).sid;
    return revoked.has(sid) ? { code: "session_revoked" } : { sid };
  }

  svc.fetch = async (input, init = {}) => {
    const request = new Request(input, init);
    const path = new URL(request.url).pathname;
    svc.calls.push(`${request.method} ${path} ${request.headers.get("Authorization") || ""}`.trim());
    await new Promise((resolve) => setTimeout(resolve, 2)); // a network hop
    if (path === "/auth/login") {
      const cookie = request.headers.get("Session-Transport") === "cookie";
      const body = issue(`s${++serial}`, { cookie });
      if (cookie && svc.loginCookies) svc.loginCookies(body.csrf_token);
      return json(200, body);
    }
    if (path === "/auth/refresh") {
      svc.refreshes += 1;
      const scripted = svc.script.shift();
      if (scripted && scripted.network) throw new TypeError("fetch failed");
      if (scripted) return error(scripted.status, "rate_limited", scripted.headers || {});
      const { refresh_token: token } = await request.json();
      const known = refreshTokens.get(token);
      if (!known) return error(401, "refresh_token_invalid");
      if (revoked.has(known.sid)) return error(401, "session_revoked");
      if (svc.sessionState === "expired") return error(401, "session_expired");
      if (known.used) {
        revoked.add(known.sid);
        return error(401, "refresh_token_reused");
      }
      known.used = true;
      svc.rotations += 1;
      return json(200, issue(known.sid));
    }
    if (path === "/auth/logout") {
      const { sid, code } = sidOf(request);
      if (!sid) return error(401, code);
      revoked.add(sid);
      return json(204, null);
    }
    if (path === "/auth/me") {
      const { sid, code } = sidOf(request);
      return sid ? json(200, { sid }) : error(401, code);
    }
    return error(404, "not_found");
  };

  svc.revoked = revoked;
  return svc;
}

/** A Storage-like map (what sessionStorage offers). */
export function memoryStorage() {
  const items = new Map();
  return {
    items,
    getItem: (key) => (items.has(key) ? items.get(key) : null),
    setItem: (key, value) => items.set(key, String(value)),
    removeItem: (key) => items.delete(key),
  };
}
