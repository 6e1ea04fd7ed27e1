import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import { builtModule, emitTypes, root, served } from "../scripts/build.js";

test("the service serves the build of src/ byte for byte (run `npm run build` after an edit)", () => {
  assert.ok(
    Buffer.from(builtModule()).equals(readFileSync(served)),
    "app/static/auth-client.js differs from the build of clients/js/src/auth-client.js",
  );
});

test("the package has no runtime dependencies", () => {
  const manifest = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
  assert.equal(manifest.dependencies, undefined);
  assert.equal(manifest.type, "module");
});

test("the types are emitted and a TypeScript user's code checks against them", () => {
  const out = mkdtempSync(join(tmpdir(), "authsvc-client-types-"));
  try {
    emitTypes(out);
    const types = readFileSync(join(out, "auth-client.d.ts"), "utf8");
    assert.match(types, /export function createAuthClient\(options\?: AuthClientOptions\): AuthClient;/);
    // A user's module, strict: the options and callbacks are typed, and a wrong one is refused.
    writeFileSync(join(out, "package.json"), '{"type": "module"}');
    writeFileSync(
      join(out, "user.ts"),
      `import { createAuthClient, type Session } from "./auth-client.js";
const auth = createAuthClient({ name: "shop", transport: "bearer", storage: sessionStorage,
  onSessionExpired: ({ reason }) => console.log(reason), onRefresh: (s: Session) => s.id });
const session: Session | null = await auth.ready;
const response: Response = await auth.fetch("/api/orders");
// @ts-expect-error: not a transport
createAuthClient({ transport: "header" });
export { session, response };
`,
    );
    const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
    execFileSync(
      process.execPath,
      [tsc, "--noEmit", "--strict", "--target", "ES2022", "--module", "ES2022",
       "--moduleResolution", "bundler", "--lib", "ES2022,DOM", join(out, "user.ts")],
      { stdio: "pipe" },
    );
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
