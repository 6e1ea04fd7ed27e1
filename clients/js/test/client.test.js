import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { AuthError, createAuthClient } from "../src/auth-client.js";
import { fakeService, memoryStorage } from "./fake-service.js";

const clients = [];
let names = 0;

/** A client of `svc`, with a namespace of its own unless `name` is given; closed after the test. */
function client(svc, options = {}) {
  names += 1;
  const made = createAuthClient({
    baseUrl: svc.base,
    transport: "bearer",
    name: `unit-${process.pid}-${names}`,
    fetch: svc.fetch,
    ...options,
  });
  clients.push(made);
  return made;
}

afterEach(() => {
  for (const made of clients.splice(0)) made.close();
  delete globalThis.document;
  delete globalThis.location;
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(check, ms = 3000) {
  const giveUp = Date.now() + ms;
  while (!check()) {
    assert.ok(Date.now() < giveUp, "timed out");
    await sleep(10);
  }
}

test("fetch() adds the token; token_expired: one refresh, one retry", async () => {
  const svc = fakeService();
  const auth = client(svc);
  await auth.ready;
  await auth.login("a@example.com", "pw");
  const first = auth.accessToken();
  assert.equal((await auth.fetch("/auth/me")).status, 200);
  assert.ok(svc.calls.includes(`GET /auth/me Bearer ${first}`));

  svc.expiredAccess.add(first); // the server says it expired early (clock skew, say)
  const response = await auth.fetch("/auth/me");
  assert.equal(response.status, 200);
  assert.equal(svc.rotations, 1);
  assert.notEqual(auth.accessToken(), first);
  assert.deepEqual(
    svc.calls.filter((call) => call.startsWith("GET /auth/me")).length,
    3, // the first call, the refused one, the retry
  );

  // Refused again after the refresh: no second refresh, no loop; the 401 is the answer.
  svc.expireIssued = true; // and so is every token the next refresh gives
  svc.expiredAccess.add(auth.accessToken());
  const calls = svc.calls.length;
  const again = await auth.fetch("/auth/me");
  assert.equal(again.status, 401);
  assert.equal(svc.rotations, 2);
  assert.equal(svc.calls.slice(calls).filter((c) => c.startsWith("POST /auth/refresh")).length, 1);
});

test("429 and 503 on the page-load refresh: ready waits (Retry-After), never null", async () => {
  const svc = fakeService();
  const storage = memoryStorage();
  const first = client(svc, { storage, name: "retry-after" });
  await first.login("a@example.com", "pw");
  first.close();

  svc.script.push({ status: 429, headers: { "Retry-After": "1" } });
  svc.script.push({ status: 503, headers: { "Retry-After": "1" } });
  const retries = [];
  const ends = [];
  const started = Date.now();
  const reloaded = client(svc, {
    storage,
    name: "retry-after",
    onRetry: (retry) => retries.push(retry),
    onSessionEnd: (end) => ends.push(end),
    onLogout: (end) => ends.push(end),
  });
  const session = await reloaded.ready;
  assert.ok(session, "a rate-limited refresh must not look like a logout");
  assert.ok(Date.now() - started >= 2000, "Retry-After was not honoured");
  assert.deepEqual(
    retries.map((r) => [r.status, r.delayMs >= 1000]),
    [
      [429, true],
      [503, true],
    ],
  );
  assert.deepEqual(ends, []);
  assert.equal(svc.rotations, 1);
});

test("network errors during a refresh are retried with backoff, never a logout", async () => {
  const svc = fakeService();
  const ends = [];
  const retries = [];
  const auth = client(svc, {
    onSessionEnd: (end) => ends.push(end),
    onRetry: (retry) => retries.push(retry),
  });
  await auth.login("a@example.com", "pw");
  svc.script.push({ network: true }, { network: true }, { network: true });
  assert.ok(await auth.refresh());
  assert.equal(svc.rotations, 1);
  assert.equal(svc.refreshes, 4);
  assert.deepEqual(
    retries.map((r) => [r.attempt, r.status]),
    [
      [0, null],
      [1, null],
      [2, null],
    ],
  );
  assert.ok(retries[2].delayMs >= retries[0].delayMs); // backoff grows (jittered)
  assert.deepEqual(ends, []);
  assert.ok(auth.session());
});

test("80 clients starting together rotate once (single flight in one page)", async () => {
  const svc = fakeService();
  const storage = memoryStorage();
  const first = client(svc, { storage, name: "eighty" });
  await first.login("a@example.com", "pw");
  first.close();

  const many = Array.from({ length: 80 }, () => client(svc, { storage, name: "eighty" }));
  const sessions = await Promise.all(many.map((c) => c.ready));
  assert.equal(svc.rotations, 1);
  assert.equal(svc.revoked.size, 0);
  assert.equal(new Set(sessions.map((s) => s && s.id)).size, 1);
  assert.equal(new Set(many.map((c) => c.accessToken())).size, 1);

  // All refresh at once again (each one's refresh_after, say): still one rotation.
  await Promise.all(many.map((c) => c.refresh()));
  assert.equal(svc.rotations, 2);
  assert.equal(new Set(many.map((c) => c.accessToken())).size, 1);
});

test("names keep two applications of one origin apart; one name shares the session", async () => {
  const svc = fakeService();
  const endsB = [];
  const a = client(svc, { name: "app-a" });
  const b = client(svc, { name: "app-b", onLogout: (end) => endsB.push(end.reason) });
  const a2 = client(svc, { name: "app-a" });
  await a.login("a@example.com", "pw");
  await b.login("b@example.com", "pw");
  await until(() => a2.session() !== null); // the same name: the login reached it
  assert.equal(a2.session().id, a.session().id);
  await a.logout();
  await until(() => a2.session() === null);
  await sleep(50);
  assert.deepEqual(endsB, []);
  assert.ok(b.session(), "app-b's session must not end with app-a's logout");
});

test("callbacks: onRefresh, onSessionExpired, onLogout, and onSessionEnd for every end", async () => {
  const svc = fakeService();
  const seen = [];
  const options = {
    name: "callbacks",
    onRefresh: (session) => seen.push(["refresh", typeof session.id]),
    onSessionExpired: (end) => seen.push(["expired", end.reason]),
    onLogout: (end) => seen.push(["logout", end.reason]),
    onSessionEnd: (end) => seen.push(["end", end.reason]),
  };
  const auth = client(svc, options);
  await auth.login("a@example.com", "pw");
  assert.deepEqual(seen, []); // a login is no refresh
  await auth.refresh();
  assert.deepEqual(seen, [["refresh", "string"]]);
  svc.sessionState = "expired";
  svc.expiredAccess.add(auth.accessToken());
  await auth.fetch("/auth/me");
  assert.deepEqual(seen.slice(1), [
    ["end", "session_expired"],
    ["expired", "session_expired"],
  ]);

  svc.sessionState = "live";
  seen.length = 0;
  await auth.login("a@example.com", "pw");
  await auth.logout();
  assert.deepEqual(seen, [
    ["end", "logged_out"],
    ["logout", "logged_out"],
  ]);
});

test("a cookie login whose cookies were not stored rejects with cookies_not_stored", async () => {
  const svc = fakeService();
  globalThis.location = { hostname: "svc.test", href: "http://svc.test/demo" };
  globalThis.document = { cookie: "" };
  const auth = client(svc, { transport: "cookie" });
  await assert.rejects(auth.login("a@example.com", "pw"), (error) => {
    assert.ok(error instanceof AuthError);
    assert.equal(error.code, "cookies_not_stored");
    return true;
  });
  assert.equal(auth.session(), null);
  assert.equal(svc.revoked.size, 1, "the session nobody can keep is logged out");

  // Where the browser stores them, the same login works.
  svc.loginCookies = (csrf) => {
    globalThis.document.cookie = `__Host-csrf_token=${csrf}`;
  };
  const kept = client(svc, { transport: "cookie" });
  assert.ok(await kept.login("a@example.com", "pw"));
});

test("transport and options are checked", () => {
  assert.throws(() => createAuthClient({ transport: "header" }), TypeError);
});
