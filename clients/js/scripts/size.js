// `npm run size`: the package's size as served, minified (esbuild) and gzipped (level 9).
import { gzipSync } from "node:zlib";

import { build } from "esbuild";

import { builtModule, source } from "./build.js";

const raw = Buffer.from(builtModule());
const minified = (
  await build({ entryPoints: [source], bundle: false, minify: true, format: "esm", write: false })
).outputFiles[0].contents;
const gzip = (bytes) => gzipSync(bytes, { level: 9 }).length;
console.log(`as served: ${raw.length} B, gzipped ${gzip(raw)} B`);
console.log(`minified:  ${minified.length} B, gzipped ${gzip(minified)} B`);
