// Against a real kurir stack (see stack.mjs): the seed's calls and the rest.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { ApiClient, ApiError } from "@kurir/client";
import { startStack } from "./stack.mjs";

let stack;
let token;
let client;

before(async () => {
  stack = await startStack();
  // The seed writes `new ApiClient(token)` with no options: the base URL comes from here.
  process.env.KURIR_BASE_URL = stack.baseUrl;
  token = stack.key;
  client = new ApiClient(token);
});

after(async () => {
  await stack?.stop();
});

let phoneSeq = 0;
function phone() {
  // +62 8 then 9 digits; never one of the sandbox's magic +1555 numbers.
  const n = (Date.now() % 1e6) * 1000 + (phoneSeq++ % 1000);
  return `+628${String(n).padStart(9, "0")}`;
}

async function newUser(c = client, extra = {}) {
  return c.users.create({ name: "Budi Santoso", phone_number: phone(), ...extra });
}

test("the seed's three calls, as the seed writes them", async () => {
  const { id: userId } = await newUser(new ApiClient(token), { id: `user_${randomUUID().slice(0, 8)}`, status: "online" });

  const client = new ApiClient(token);

  const list = await client.users.list();
  assert.ok(Array.isArray(list.users));
  assert.ok("next_cursor" in list);
  const u = list.users.find((x) => x.id === userId);
  assert.ok(u, "the new user is listed");
  for (const f of ["id", "name", "phone_number", "profile_image", "status"]) assert.ok(f in u, f);

  const sent = await client.users.sendMessage(userId, {
    "message": "Halo! Ini adalah pesan dari API WhatsApp."
  });
  assert.equal(typeof sent.message_id, "string");
  assert.ok(["queued", "sending", "sent"].includes(sent.message_status), sent.message_status);

  const status = await client.users.updateStatus(userId, {
    "status": "Sedang sibuk dalam rapat."
  });
  assert.equal(typeof status.status_update_id, "string");
  assert.ok(["queued", "success"].includes(status.status_update), status.status_update);
});

test("users.create, users.get, and a duplicate is a 409 ApiError naming the field", async () => {
  const id = `u_${randomUUID().slice(0, 12)}`;
  const p = phone();
  const created = await client.users.create({ id, name: "Sari", phone_number: p, profile_image: null });
  assert.equal(created.id, id);
  const got = await client.users.get(id);
  assert.equal(got.phone_number, p);
  await assert.rejects(client.users.create({ id, name: "Sari", phone_number: phone() }), (e) => {
    assert.ok(e instanceof ApiError);
    assert.equal(e.status, 409);
    assert.ok(e.errors.some((x) => x.field === "id"), JSON.stringify(e.body));
    return true;
  });
  await assert.rejects(client.users.get("no_such_user"), (e) => e instanceof ApiError && e.status === 404 && e.type.endsWith("not-found"));
});

test("a blank message is a 422 ApiError naming `message`", async () => {
  const u = await newUser();
  await assert.rejects(client.users.sendMessage(u.id, { message: "   " }), (e) => {
    assert.ok(e instanceof ApiError);
    assert.equal(e.status, 422);
    assert.equal(e.errors[0].field, "message");
    assert.ok(e.type.endsWith("/validation"));
    assert.equal(typeof e.title, "string");
    assert.equal(typeof e.detail, "string");
    assert.equal(e.body.status, 422);
    return true;
  });
});

test("the same Idempotency-Key twice creates one message", async () => {
  const u = await newUser();
  const idempotencyKey = randomUUID();
  const a = await client.users.sendMessage(u.id, { message: "sekali saja" }, { idempotencyKey });
  const b = await client.users.sendMessage(u.id, { message: "sekali saja" }, { idempotencyKey });
  assert.equal(a.message_id, b.message_id);
  const page = await client.messages.list(u.id);
  assert.equal(page.messages.length, 1);
  assert.equal(page.messages[0].message_id, a.message_id);
  // Same key, other body: 422 naming Idempotency-Key.
  await assert.rejects(client.users.sendMessage(u.id, { message: "lain" }, { idempotencyKey }), (e) => e instanceof ApiError && e.status === 422);
});

test("users.iterate walks 250 users in pages of 100", async () => {
  let lists = 0;
  const counting = (url, init) => {
    if (init.method === "GET" && new URL(url).pathname === "/v1/users") lists++;
    return fetch(url, init);
  };
  const c = new ApiClient(stack.newKey(`js_iter_${randomUUID().slice(0, 8)}`), { fetch: counting });
  const want = new Set();
  for (let i = 0; i < 250; i += 25) {
    const made = await Promise.all(Array.from({ length: 25 }, () => newUser(c)));
    for (const u of made) want.add(u.id);
  }
  const seen = [];
  for await (const u of c.users.iterate({ limit: 100 })) seen.push(u.id);
  assert.equal(seen.length, 250);
  assert.deepEqual(new Set(seen), want);
  assert.equal(lists, 3);
  const first = await c.users.list({ limit: 100 });
  assert.equal(first.users.length, 100);
  assert.equal(typeof first.next_cursor, "string");
});

test("messages.wait returns the message once sent; get, list and attempts agree", async () => {
  const u = await newUser();
  const { message_id } = await client.users.sendMessage(u.id, { message: "Halo!" });
  const m = await client.messages.wait(message_id, { timeoutMs: 20_000, intervalMs: 100 });
  assert.equal(m.message_status, "sent");
  assert.equal(m.message_id, message_id);
  const again = await client.messages.get(message_id);
  assert.equal(again.message_status, "sent");
  const { attempts } = await client.messages.attempts(message_id);
  assert.equal(attempts.length, 1);
  assert.equal(attempts[0].outcome, "delivered");
  const sentOnly = await client.messages.list(u.id, { status: "sent", limit: 10 });
  assert.equal(sentOnly.messages.length, 1);
});

test("sendMessage with {wait: 10} answers sent", async () => {
  const u = await newUser();
  const r = await client.users.sendMessage(u.id, { message: "Halo! Ini adalah pesan dari API WhatsApp." }, { wait: 10 });
  assert.equal(r.message_status, "sent");
});

test("a template send, and updateStatus with wait, then statusUpdates.get/attempts", async () => {
  const u = await newUser();
  const t = await client.users.sendMessage(u.id, { template: { name: "order_update", language: "id", parameters: ["Budi", "#1234"] } }, { wait: 10 });
  assert.equal(t.message_status, "sent");
  const m = await client.messages.get(t.message_id);
  assert.equal(m.template.name, "order_update");

  const s = await client.users.updateStatus(u.id, { status: "Sedang sibuk dalam rapat." }, { wait: 10 });
  assert.equal(s.status_update, "success");
  const su = await client.statusUpdates.get(s.status_update_id);
  assert.equal(su.status_update, "success");
  assert.equal(su.status, "Sedang sibuk dalam rapat.");
  const { attempts } = await client.statusUpdates.attempts(s.status_update_id);
  assert.equal(attempts.length, 1);
  assert.equal((await client.users.get(u.id)).status, "Sedang sibuk dalam rapat.");
});

test("messages.wait throws a timeout error when the time is up", async () => {
  const u = await newUser();
  const { message_id } = await client.users.sendMessage(u.id, { message: "cepat" });
  // 0 ms: one look, then the deadline has passed unless it is already final.
  try {
    const m = await client.messages.wait(message_id, { timeoutMs: 0 });
    assert.ok(["sent", "delivered", "read", "failed"].includes(m.message_status));
  } catch (e) {
    assert.equal(e.name, "WaitTimeoutError");
    assert.equal(e.last.message_id, message_id);
  }
});

test("messages.sendBatch: one result per item, in order; invalid items fail alone", async () => {
  const [a, b] = await Promise.all([newUser(), newUser()]);
  const { results } = await client.messages.sendBatch([
    { user_id: a.id, message: "Halo A" },
    { user_id: b.id, template: { name: "order_update", language: "id", parameters: ["B", "#2"] } },
    { user_id: "no_such_user", message: "siapa?" },
    { user_id: a.id, message: "  " },
  ]);
  assert.equal(results.length, 4);
  assert.equal(typeof results[0].message_id, "string");
  assert.equal(results[0].message_status, "queued");
  assert.equal(typeof results[1].message_id, "string");
  assert.equal(results[2].error.status, 404);
  assert.equal(results[3].error.status, 422);
  const m = await client.messages.wait(results[1].message_id, { timeoutMs: 20_000, intervalMs: 100 });
  assert.equal(m.message_status, "sent");

  // The whole batch is idempotent under one key.
  const idempotencyKey = randomUUID();
  const items = [{ user_id: b.id, message: "sekali" }];
  const r1 = await client.messages.sendBatch(items, { idempotencyKey });
  const r2 = await client.messages.sendBatch(items, { idempotencyKey });
  assert.equal(r1.results[0].message_id, r2.results[0].message_id);
});

test("a bad key is a 401 ApiError", async () => {
  const c = new ApiClient("not-a-key");
  await assert.rejects(c.users.list(), (e) => e instanceof ApiError && e.status === 401);
});
