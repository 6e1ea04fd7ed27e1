// `npm run build`: dist/auth-client.js and its types (dist/auth-client.d.ts), and the copy
// the service serves at /static/auth-client.js. One source: src/auth-client.js.
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const root = join(dirname(fileURLToPath(import.meta.url)), "..");
export const source = join(root, "src", "auth-client.js");
export const served = join(root, "..", "..", "app", "static", "auth-client.js");

/** The built module: the source under a banner that names it (no transformation). */
export function builtModule() {
  const { name, version } = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
  const banner =
    `// ${name} ${version}. Built from clients/js/src/auth-client.js by \`npm run build\`: ` +
    "edit the source, not this copy.\n";
  return banner + readFileSync(source, "utf8");
}

/** Declarations from the JSDoc types, by the TypeScript compiler, into `outDir`. */
export function emitTypes(outDir) {
  const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
  execFileSync(process.execPath, [tsc, "-p", join(root, "tsconfig.json"), "--outDir", outDir], {
    stdio: "inherit",
  });
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const dist = join(root, "dist");
  mkdirSync(dist, { recursive: true });
  const module = builtModule();
  writeFileSync(join(dist, "auth-client.js"), module);
  writeFileSync(served, module);
  emitTypes(dist);
  console.log(`built dist/auth-client.js, dist/auth-client.d.ts and app/static/auth-client.js`);
}
