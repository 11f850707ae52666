import type { components } from "./schema.js";
import { ApiError, WaitTimeoutError } from "./errors.js";

type Schemas = components["schemas"];
export type User = Schemas["User"];
export type UserList = Schemas["UserList"];
export type CreateUser = Schemas["CreateUser"];
export type Message = Schemas["Message"];
export type MessageList = Schemas["MessageList"];
export type MessageStatus = Schemas["MessageStatus"];
export type Accepted = Schemas["Accepted"];
export type StatusAccepted = Schemas["StatusAccepted"];
export type StatusUpdate = Schemas["StatusUpdate"];
export type StatusUpdateState = Schemas["StatusUpdateState"];
export type AttemptList = Schemas["AttemptList"];
export type Attempt = Schemas["Attempt"];
export type BatchResult = Schemas["BatchResult"];
export type BatchResults = Schemas["BatchResults"];
export type Problem = Schemas["Problem"];

// The request shapes below are written by hand: openapi-typescript renders the
// schema's `oneOf` for `template` as `Record<string, never>`, and its
// TemplateParameter leaves out the per-type fields (`text`, `currency`, …).

/** A template parameter in Meta's shape: `{type: "text", text: "Ada"}`, `{type: "currency", currency: {…}}`, … */
export interface TemplateParameter {
  type: Schemas["TemplateParameter"]["type"];
  [field: string]: unknown;
}

/** A template component in Meta's shape (header, body or button parameters). */
export interface TemplateComponent {
  type: Schemas["TemplateComponent"]["type"];
  sub_type?: string;
  index?: string | number;
  parameters?: TemplateParameter[];
}

/** An approved template: `parameters` (the body's positional strings) or `components`. */
export interface Template {
  name: string;
  language: string;
  parameters?: string[];
  components?: TemplateComponent[];
}

/** A send: a text (`message`) or an approved `template`, exactly one. */
export type SendMessage = { message: string; template?: never } | { template: Template; message?: never };

/** One item of a batch: a send to `user_id`, optionally idempotent by itself. */
export type BatchItem = { user_id: string; idempotency_key?: string } & SendMessage;

export interface ClientOptions {
  /** Where kurir listens. Default `process.env.KURIR_BASE_URL`, else `http://localhost:8080`. */
  baseUrl?: string;
  /** Per-attempt timeout in milliseconds (a `wait` adds its own seconds). Default 30000. */
  timeoutMs?: number;
  /** Retries of 429, 503, network errors and timeouts. Default 3. */
  maxRetries?: number;
  /** First backoff step in milliseconds, doubled each retry, with jitter. Default 500. */
  retryBaseMs?: number;
  /** A `fetch` implementation. Default the global one. */
  fetch?: typeof globalThis.fetch;
}

export interface CreateOptions {
  /** Sent as `Idempotency-Key`; a random UUID when absent. The same key is sent on every retry. */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

export interface WaitOptions extends CreateOptions {
  /** `Prefer: wait=N`: hold the answer up to N seconds (≤ 30) until the outcome is known. */
  wait?: number;
}

export interface PageOptions {
  limit?: number;
  cursor?: string;
}

export interface RequestOptions {
  signal?: AbortSignal;
}

const FINAL_MESSAGE_STATES: ReadonlySet<string> = new Set(["sent", "delivered", "read", "failed"]);

interface Req {
  method: "GET" | "POST";
  path: string;
  query?: Record<string, string | number | undefined>;
  body?: unknown;
  /** A create: send an Idempotency-Key (this one, or a fresh UUID). */
  idempotent?: boolean;
  idempotencyKey?: string;
  wait?: number;
  signal?: AbortSignal | undefined;
}

function defaultBaseUrl(): string {
  const env = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process?.env;
  return env?.KURIR_BASE_URL || "http://localhost:8080";
}

/** `Retry-After` in milliseconds (delta-seconds or an HTTP date), or undefined. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | undefined {
  if (value == null) return undefined;
  const v = value.trim();
  if (/^\d+(\.\d+)?$/.test(v)) return Math.ceil(Number(v) * 1000);
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(0, t - now);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

const enc = encodeURIComponent;

export class ApiClient {
  readonly baseUrl: string;
  readonly timeoutMs: number;
  readonly maxRetries: number;
  readonly retryBaseMs: number;
  readonly users: Users;
  readonly messages: Messages;
  readonly statusUpdates: StatusUpdates;
  readonly #token: string;
  readonly #fetch: typeof globalThis.fetch;

  constructor(token: string, options: ClientOptions = {}) {
    if (!token) throw new TypeError("ApiClient: an API key is required");
    this.#token = token;
    this.baseUrl = (options.baseUrl ?? defaultBaseUrl()).replace(/\/+$/, "");
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.maxRetries = options.maxRetries ?? 3;
    this.retryBaseMs = options.retryBaseMs ?? 500;
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== "function") throw new TypeError("ApiClient: no fetch available (Node 20+ has one)");
    this.#fetch = options.fetch ? f : f.bind(globalThis);
    this.users = new Users(this);
    this.messages = new Messages(this);
    this.statusUpdates = new StatusUpdates(this);
  }

  /** Backoff before retry number `attempt` (0-based): exponential, full jitter in its upper half. */
  #backoff(attempt: number): number {
    const step = Math.min(this.retryBaseMs * 2 ** attempt, 20_000);
    return step / 2 + Math.random() * (step / 2);
  }

  /** @internal */
  async request<T>(req: Req): Promise<T> {
    const url = new URL(this.baseUrl + req.path);
    for (const [k, v] of Object.entries(req.query ?? {})) {
      if (v !== undefined && v !== "") url.searchParams.set(k, String(v));
    }
    const headers: Record<string, string> = {
      Authorization: `Bearer ${this.#token}`,
      Accept: "application/json, application/problem+json",
    };
    let body: string | undefined;
    if (req.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(req.body);
    }
    if (req.idempotent) headers["Idempotency-Key"] = req.idempotencyKey ?? crypto.randomUUID();
    let timeoutMs = this.timeoutMs;
    if (req.wait !== undefined && req.wait > 0) {
      const n = Math.floor(req.wait);
      headers["Prefer"] = `wait=${n}`;
      timeoutMs += Math.min(n, 30) * 1000;
    }

    for (let attempt = 0; ; attempt++) {
      const canRetry = attempt < this.maxRetries;
      const ctl = new AbortController();
      const timer = setTimeout(() => ctl.abort(new DOMException(`kurir: no answer within ${timeoutMs} ms`, "TimeoutError")), timeoutMs);
      const onAbort = () => ctl.abort(req.signal!.reason);
      req.signal?.addEventListener("abort", onAbort, { once: true });
      let res: Response;
      let text: string;
      try {
        res = await this.#fetch(url, { method: req.method, headers, body, signal: ctl.signal });
        text = await res.text();
      } catch (err) {
        // The caller's own abort is final; a timeout or a network error is retried.
        if (req.signal?.aborted || !canRetry) throw err;
        await sleep(this.#backoff(attempt), req.signal);
        continue;
      } finally {
        clearTimeout(timer);
        req.signal?.removeEventListener("abort", onAbort);
      }
      if ((res.status === 429 || res.status === 503) && canRetry) {
        const after = parseRetryAfter(res.headers.get("retry-after"));
        await sleep(Math.max(this.#backoff(attempt), after ?? 0), req.signal);
        continue;
      }
      let parsed: unknown = text;
      if (text) {
        try {
          parsed = JSON.parse(text);
        } catch {
          /* keep the text */
        }
      }
      if (!res.ok) throw new ApiError(res.status, parsed, res.headers);
      return parsed as T;
    }
  }
}

class Users {
  readonly #c: ApiClient;
  constructor(c: ApiClient) {
    this.#c = c;
  }

  /** `GET /v1/users`: one page, `{users, next_cursor}`. */
  list(page: PageOptions = {}, opts: RequestOptions = {}): Promise<UserList> {
    return this.#c.request({ method: "GET", path: "/v1/users", query: { limit: page.limit, cursor: page.cursor }, signal: opts.signal });
  }

  /** Every user, page by page (following `next_cursor`). */
  async *iterate(page: { limit?: number } = {}, opts: RequestOptions = {}): AsyncGenerator<User, void, undefined> {
    let cursor: string | undefined;
    do {
      const p = await this.list({ limit: page.limit, cursor }, opts);
      yield* p.users;
      cursor = p.next_cursor ?? undefined;
    } while (cursor);
  }

  /** `POST /v1/users` (201). */
  create(user: CreateUser, opts: CreateOptions = {}): Promise<User> {
    return this.#c.request({ method: "POST", path: "/v1/users", body: user, idempotent: true, idempotencyKey: opts.idempotencyKey, signal: opts.signal });
  }

  /** `GET /v1/users/{id}`. */
  get(id: string, opts: RequestOptions = {}): Promise<User> {
    return this.#c.request({ method: "GET", path: `/v1/users/${enc(id)}`, signal: opts.signal });
  }

  /** `POST /v1/users/{id}/messages`: `{message_id, message_status}` (`queued`, or the outcome with `wait`). */
  sendMessage(userId: string, send: SendMessage, opts: WaitOptions = {}): Promise<Accepted> {
    return this.#c.request({
      method: "POST",
      path: `/v1/users/${enc(userId)}/messages`,
      body: send,
      idempotent: true,
      idempotencyKey: opts.idempotencyKey,
      wait: opts.wait,
      signal: opts.signal,
    });
  }

  /** `POST /v1/users/{id}/status`: `{status_update_id, status_update}`. */
  updateStatus(userId: string, update: { status: string }, opts: WaitOptions = {}): Promise<StatusAccepted> {
    return this.#c.request({
      method: "POST",
      path: `/v1/users/${enc(userId)}/status`,
      body: update,
      idempotent: true,
      idempotencyKey: opts.idempotencyKey,
      wait: opts.wait,
      signal: opts.signal,
    });
  }
}

class Messages {
  readonly #c: ApiClient;
  constructor(c: ApiClient) {
    this.#c = c;
  }

  /** `GET /v1/messages/{id}`. */
  get(id: string, opts: RequestOptions = {}): Promise<Message> {
    return this.#c.request({ method: "GET", path: `/v1/messages/${enc(id)}`, signal: opts.signal });
  }

  /** `GET /v1/users/{id}/messages`: one page, newest first. */
  list(userId: string, q: PageOptions & { status?: MessageStatus } = {}, opts: RequestOptions = {}): Promise<MessageList> {
    return this.#c.request({
      method: "GET",
      path: `/v1/users/${enc(userId)}/messages`,
      query: { status: q.status, limit: q.limit, cursor: q.cursor },
      signal: opts.signal,
    });
  }

  /** Every message of a user, newest first, page by page. */
  async *iterate(userId: string, q: { status?: MessageStatus; limit?: number } = {}, opts: RequestOptions = {}): AsyncGenerator<Message, void, undefined> {
    let cursor: string | undefined;
    do {
      const p = await this.list(userId, { ...q, cursor }, opts);
      yield* p.messages;
      cursor = p.next_cursor ?? undefined;
    } while (cursor);
  }

  /** `GET /v1/messages/{id}/attempts`: every delivery attempt, oldest first. */
  attempts(id: string, opts: RequestOptions = {}): Promise<AttemptList> {
    return this.#c.request({ method: "GET", path: `/v1/messages/${enc(id)}/attempts`, signal: opts.signal });
  }

  /** `POST /v1/messages/batch`: one result per item, in order. */
  sendBatch(items: BatchItem[], opts: CreateOptions = {}): Promise<BatchResults> {
    return this.#c.request({
      method: "POST",
      path: "/v1/messages/batch",
      body: { messages: items },
      idempotent: true,
      idempotencyKey: opts.idempotencyKey,
      signal: opts.signal,
    });
  }

  /**
   * Poll `GET /v1/messages/{id}` until the message is `sent`, `delivered`,
   * `read` or `failed`; throws `WaitTimeoutError` after `timeoutMs` (default 60000).
   */
  async wait(id: string, opts: { timeoutMs?: number; intervalMs?: number; signal?: AbortSignal } = {}): Promise<Message> {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const intervalMs = opts.intervalMs ?? 500;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = await this.get(id, { signal: opts.signal });
      if (FINAL_MESSAGE_STATES.has(m.message_status)) return m;
      const left = deadline - Date.now();
      if (left <= 0) throw new WaitTimeoutError(`message ${id} still ${m.message_status} after ${timeoutMs} ms`, m);
      await sleep(Math.min(intervalMs, left), opts.signal);
    }
  }
}

class StatusUpdates {
  readonly #c: ApiClient;
  constructor(c: ApiClient) {
    this.#c = c;
  }

  /** `GET /v1/status-updates/{id}`. */
  get(id: string, opts: RequestOptions = {}): Promise<StatusUpdate> {
    return this.#c.request({ method: "GET", path: `/v1/status-updates/${enc(id)}`, signal: opts.signal });
  }

  /** `GET /v1/status-updates/{id}/attempts`. */
  attempts(id: string, opts: RequestOptions = {}): Promise<AttemptList> {
    return this.#c.request({ method: "GET", path: `/v1/status-updates/${enc(id)}/attempts`, signal: opts.signal });
  }
}

export type { Users, Messages, StatusUpdates };
