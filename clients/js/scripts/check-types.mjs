// Drift check: regenerate the OpenAPI types into a temp file and compare them
// with the committed src/schema.d.ts. Exits 1 when they differ.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dir = mkdtempSync(join(tmpdir(), "kurir-schema-"));
const out = join(dir, "schema.d.ts");
try {
  execFileSync(
    process.execPath,
    [join(root, "node_modules", "openapi-typescript", "bin", "cli.js"), join(root, "..", "..", "openapi.json"), "-o", out],
    { stdio: ["ignore", "ignore", "inherit"] },
  );
  const fresh = readFileSync(out, "utf8");
  const committed = readFileSync(join(root, "src", "schema.d.ts"), "utf8");
  if (fresh !== committed) {
    console.error("src/schema.d.ts is out of date with ../../openapi.json; run `npm run generate-types` and commit it.");
    process.exit(1);
  }
  console.log("src/schema.d.ts matches ../../openapi.json");
} finally {
  rmSync(dir, { recursive: true, force: true });
}
