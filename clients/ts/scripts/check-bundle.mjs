// Fails when the checked-in dist/tickwire.browser.js differs from a fresh build
// of the sources (the engine serves the checked-in file as it is).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const dir = mkdtempSync(join(tmpdir(), "tickwire-bundle-"));
try {
  const fresh = join(dir, "tickwire.browser.js");
  execFileSync(process.execPath, [join(root, "scripts/bundle.mjs"), fresh], { stdio: "inherit" });
  const want = readFileSync(fresh);
  let have;
  try {
    have = readFileSync(join(root, "dist/tickwire.browser.js"));
  } catch {
    console.error("dist/tickwire.browser.js is missing: run `npm run bundle` and commit it");
    process.exit(1);
  }
  if (!want.equals(have)) {
    console.error("dist/tickwire.browser.js is out of date: run `npm run bundle` and commit it");
    process.exit(1);
  }
  console.log(`dist/tickwire.browser.js is up to date (${have.length} bytes)`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
