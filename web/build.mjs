// Builds the dashboard into the Python package (src/virtpool/web/static), or into
// $VIRTPOOL_WEB_OUT (the test that checks the committed build matches these sources).
import * as esbuild from "esbuild";
import { copyFile, mkdir, rm } from "node:fs/promises";
import { fileURLToPath } from "node:url";

const here = fileURLToPath(new URL(".", import.meta.url));
const out = process.env.VIRTPOOL_WEB_OUT ?? `${here}../src/virtpool/web/static`;

await rm(`${out}/assets`, { recursive: true, force: true });
await mkdir(`${out}/assets`, { recursive: true });
await esbuild.build({
  absWorkingDir: here,
  entryPoints: { app: "src/main.js" },
  bundle: true,
  minify: true,
  format: "esm",
  target: "es2022",
  outdir: `${out}/assets`,
  legalComments: "eof", // the libraries' MIT notices stay in the bundle
  logLevel: "warning",
});
await copyFile(`${here}src/index.html`, `${out}/index.html`);
console.log(`dashboard built into ${out}`);
