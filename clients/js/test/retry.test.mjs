// Retries, timeouts and errors against a tiny local HTTP server (not kurir).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import SeedApiClient, { ApiClient, ApiError, parseRetryAfter } from "@kurir/client";

/** A server that answers request number i (0-based) with script[i] (the last one repeats). */
async function scripted(script) {
  const seen = [];
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      seen.push({ at: Date.now(), method: req.method, url: req.url, headers: req.headers, body });
      const step = script[Math.min(seen.length - 1, script.length - 1)];
      step(req, res);
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  servers.push(server);
  return { url: `http://127.0.0.1:${server.address().port}`, seen };
}
const servers = [];
after(() => {
  for (const s of servers) {
    s.closeAllConnections();
    s.close();
  }
});

const problem = (status, extra = {}) => (req, res) => {
  res.writeHead(status, { "content-type": "application/problem+json", ...extra.headers });
  res.end(JSON.stringify({ type: `https://kurir.dev/problems/x${status}`, title: `T${status}`, status, detail: `D${status}`, ...extra.body }));
};
const json = (status, body) => (req, res) => {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
};

test("503 with Retry-After: waits at least that long, resends the same Idempotency-Key", async () => {
  const s = await scripted([
    problem(503, { headers: { "retry-after": "1" } }),
    problem(503, { headers: { "retry-after": "1" } }),
    json(202, { message_id: "m1", message_status: "queued" }),
  ]);
  const c = new ApiClient("k", { baseUrl: s.url, retryBaseMs: 1 });
  const t0 = Date.now();
  const r = await c.users.sendMessage("u1", { message: "Halo" });
  assert.deepEqual(r, { message_id: "m1", message_status: "queued" });
  assert.equal(s.seen.length, 3);
  assert.ok(s.seen[1].at - s.seen[0].at >= 990, `first retry after ${s.seen[1].at - s.seen[0].at} ms`);
  assert.ok(s.seen[2].at - s.seen[1].at >= 990, `second retry after ${s.seen[2].at - s.seen[1].at} ms`);
  assert.ok(Date.now() - t0 >= 1980);
  const keys = s.seen.map((x) => x.headers["idempotency-key"]);
  assert.match(keys[0], /^[0-9a-f-]{36}$/);
  assert.ok(keys.every((k) => k === keys[0]), `keys ${keys}`);
  assert.equal(s.seen[0].headers.authorization, "Bearer k");
  assert.equal(s.seen[0].headers["content-type"], "application/json");
  assert.deepEqual(JSON.parse(s.seen[0].body), { message: "Halo" });
  assert.equal(s.seen[0].url, "/v1/users/u1/messages");
});

test("429 with Retry-After on a GET is retried; the caller's key is used", async () => {
  const s = await scripted([problem(429, { headers: { "retry-after": "1" } }), json(200, { users: [], next_cursor: null })]);
  const c = new ApiClient("k", { baseUrl: s.url, retryBaseMs: 1 });
  const r = await c.users.list({ limit: 5 });
  assert.deepEqual(r, { users: [], next_cursor: null });
  assert.equal(s.seen.length, 2);
  assert.ok(s.seen[1].at - s.seen[0].at >= 990);
  assert.equal(s.seen[0].url, "/v1/users?limit=5");
  assert.equal(s.seen[0].headers["idempotency-key"], undefined);

  const s2 = await scripted([problem(429, { headers: { "retry-after": "0" } }), json(202, { status_update_id: "s", status_update: "queued" })]);
  const c2 = new ApiClient("k", { baseUrl: s2.url, retryBaseMs: 1 });
  await c2.users.updateStatus("u", { status: "x" }, { idempotencyKey: "mine-1", wait: 5 });
  assert.deepEqual(s2.seen.map((x) => x.headers["idempotency-key"]), ["mine-1", "mine-1"]);
  assert.equal(s2.seen[0].headers.prefer, "wait=5");
});

test("after maxRetries the 503 surfaces as an ApiError", async () => {
  const s = await scripted([problem(503, { headers: { "retry-after": "0" } })]);
  const c = new ApiClient("k", { baseUrl: s.url, maxRetries: 2, retryBaseMs: 1 });
  await assert.rejects(c.messages.get("m"), (e) => {
    assert.ok(e instanceof ApiError);
    assert.equal(e.status, 503);
    assert.equal(e.title, "T503");
    assert.equal(e.detail, "D503");
    assert.equal(e.type, "https://kurir.dev/problems/x503");
    assert.equal(e.headers.get("retry-after"), "0");
    return true;
  });
  assert.equal(s.seen.length, 3);
});

test("other errors are not retried and carry the problem's field errors", async () => {
  const s = await scripted([problem(422, { body: { errors: [{ field: "message", message: "must not be blank" }] } })]);
  const c = new ApiClient("k", { baseUrl: s.url, retryBaseMs: 1 });
  await assert.rejects(c.users.sendMessage("u", { message: " " }), (e) => {
    assert.ok(e instanceof ApiError);
    assert.equal(e.status, 422);
    assert.deepEqual(e.errors, [{ field: "message", message: "must not be blank" }]);
    assert.equal(e.body.detail, "D422");
    return true;
  });
  assert.equal(s.seen.length, 1);
});

test("a dropped connection and a timeout are retried with the same key", async () => {
  const s = await scripted([
    (req, res) => req.socket.destroy(),
    () => {
      /* never answers: the client's timeout fires */
    },
    json(201, { id: "u1" }),
  ]);
  const c = new ApiClient("k", { baseUrl: s.url, timeoutMs: 300, retryBaseMs: 1 });
  const r = await c.users.create({ name: "A", phone_number: "+6281234567" }, { idempotencyKey: "create-1" });
  assert.deepEqual(r, { id: "u1" });
  assert.equal(s.seen.length, 3);
  assert.deepEqual(s.seen.map((x) => x.headers["idempotency-key"]), ["create-1", "create-1", "create-1"]);
});

test("no retries when maxRetries is 0; a non-JSON error body is kept as text", async () => {
  const s = await scripted([(req, res) => (res.writeHead(503, { "content-type": "text/plain" }), res.end("down"))]);
  const c = new ApiClient("k", { baseUrl: s.url, maxRetries: 0 });
  await assert.rejects(c.statusUpdates.get("x"), (e) => e instanceof ApiError && e.status === 503 && e.body === "down" && e.errors.length === 0);
  assert.equal(s.seen.length, 1);
});

test("messages.wait polls until a final state", async () => {
  const s = await scripted([json(200, { message_id: "m", message_status: "queued" }), json(200, { message_id: "m", message_status: "sending" }), json(200, { message_id: "m", message_status: "sent" })]);
  const c = new ApiClient("k", { baseUrl: s.url });
  const m = await c.messages.wait("m", { intervalMs: 10 });
  assert.equal(m.message_status, "sent");
  assert.equal(s.seen.length, 3);

  const s2 = await scripted([json(200, { message_id: "m", message_status: "queued" })]);
  const c2 = new ApiClient("k", { baseUrl: s2.url });
  await assert.rejects(c2.messages.wait("m", { timeoutMs: 100, intervalMs: 10 }), (e) => e.name === "WaitTimeoutError" && e.last.message_status === "queued");
});

test("parseRetryAfter: seconds and HTTP dates", () => {
  assert.equal(parseRetryAfter("2"), 2000);
  assert.equal(parseRetryAfter(null), undefined);
  assert.equal(parseRetryAfter("soon"), undefined);
  const now = Date.parse("2026-01-01T00:00:00Z");
  assert.equal(parseRetryAfter("Thu, 01 Jan 2026 00:00:03 GMT", now), 3000);
});

test("the seed's default import is the same class; a token is required", () => {
  assert.equal(SeedApiClient, ApiClient);
  assert.throws(() => new ApiClient(""), TypeError);
  assert.equal(new ApiClient("k", { baseUrl: "http://h:1/" }).baseUrl, "http://h:1");
});
