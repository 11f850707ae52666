// tsc does not copy hand-written .d.ts files; the generated schema types are
// imported by the emitted declarations, so they go to dist/ too.
import { copyFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
const root = join(dirname(fileURLToPath(import.meta.url)), "..");
copyFileSync(join(root, "src", "schema.d.ts"), join(root, "dist", "schema.d.ts"));
