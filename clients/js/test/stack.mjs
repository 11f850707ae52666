// Starts a real kurir stack for the tests: a fresh Postgres database and
// queue prefix, `kurir migrate`, an API key, kurir-sandbox and `kurir dev`.
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:net";
import { randomBytes } from "node:crypto";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const binDir = process.env.KURIR_BIN_DIR || join(repo, "target", "debug");
const pgHost = process.env.KURIR_TEST_PG_HOST || "127.0.0.1";
const pgPort = process.env.KURIR_TEST_PG_PORT || "5432";
const pgUser = process.env.KURIR_TEST_PG_USER || "postgres";
const amqp = process.env.AMQP_URL || "amqp://guest:guest@127.0.0.1:5672/%2f";

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function startProcess(name, env) {
  const child = spawn(join(binDir, name.split(" ")[0]), name.split(" ").slice(1), {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const log = [];
  const keep = (d) => {
    log.push(d.toString());
    if (log.length > 200) log.shift();
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  child.log = log;
  return child;
}

export async function startStack() {
  const suffix = randomBytes(6).toString("hex");
  const db = `kurir_js_${suffix}`;
  const databaseUrl = `postgres://${pgUser}@${pgHost}:${pgPort}/${db}`;
  const [apiPort, sandboxPort] = [await freePort(), await freePort()];
  const env = {
    DATABASE_URL: databaseUrl,
    AMQP_URL: amqp,
    KURIR_QUEUE_PREFIX: `kurir_js_${suffix}`,
    RUST_LOG: process.env.RUST_LOG || "warn",
  };
  execFileSync(join(binDir, "kurir"), ["migrate"], { env: { ...process.env, ...env }, stdio: ["ignore", "ignore", "inherit"] });
  const key = execFileSync(join(binDir, "kurir"), ["keys", "create", "--account", "js"], {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "inherit"],
  })
    .toString()
    .trim();

  const sandbox = startProcess("kurir-sandbox", { KURIR_SANDBOX_ADDR: `127.0.0.1:${sandboxPort}`, KURIR_SANDBOX_TOKEN: "t" });
  const api = startProcess("kurir dev", {
    ...env,
    KURIR_API_ADDR: `127.0.0.1:${apiPort}`,
    KURIR_WORKER_METRICS_ADDR: "127.0.0.1:0",
    KURIR_PROVIDER: "whatsapp",
    KURIR_WHATSAPP_BASE_URL: `http://127.0.0.1:${sandboxPort}/v25.0`,
    KURIR_WHATSAPP_TOKEN: "t",
    KURIR_WHATSAPP_PHONE_NUMBER_ID: "1234567890",
    KURIR_INTAKE_RATE: "0",
  });
  const baseUrl = `http://127.0.0.1:${apiPort}`;

  const stop = async () => {
    for (const p of [api, sandbox]) {
      if (p.exitCode === null && p.signalCode === null) {
        const exited = new Promise((r) => p.once("exit", r));
        p.kill("SIGTERM");
        await Promise.race([exited, sleep(5000)]);
        if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
      }
    }
    try {
      execFileSync("psql", ["-h", pgHost, "-p", pgPort, "-U", pgUser, "-d", "postgres", "-qc", `DROP DATABASE IF EXISTS ${db} WITH (FORCE)`], {
        stdio: ["ignore", "ignore", "inherit"],
      });
    } catch (e) {
      console.error(`could not drop ${db}: ${e.message}`);
    }
  };

  const deadline = Date.now() + 60_000;
  for (;;) {
    if (api.exitCode !== null || sandbox.exitCode !== null) {
      const logs = api.log.join("") + sandbox.log.join("");
      await stop();
      throw new Error(`kurir exited during start:\n${logs}`);
    }
    try {
      const r = await fetch(`${baseUrl}/readyz`);
      if (r.status === 200) break;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) {
      const logs = api.log.join("");
      await stop();
      throw new Error(`kurir not ready within 60 s:\n${logs}`);
    }
    await sleep(200);
  }
  const newKey = (account) =>
    execFileSync(join(binDir, "kurir"), ["keys", "create", "--account", account], {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "inherit"],
    })
      .toString()
      .trim();
  return { baseUrl, key, newKey, sandboxUrl: `http://127.0.0.1:${sandboxPort}`, stop, logs: () => api.log.join("") };
}
