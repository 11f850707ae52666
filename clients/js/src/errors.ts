import type { components } from "./schema.js";

/** One entry of a problem's `errors`: the field at fault and why. */
export type FieldError = components["schemas"]["FieldError"];

/**
 * A non-2xx answer from kurir (after retries, for 429 and 503). Carries the
 * RFC 9457 problem+json the API returned.
 */
export class ApiError extends Error {
  override readonly name = "ApiError";
  /** The HTTP status. */
  readonly status: number;
  /** The problem's `type` URI, e.g. `https://kurir.dev/problems/validation`. */
  readonly type: string | undefined;
  /** The problem's short `title`. */
  readonly title: string | undefined;
  /** The problem's `detail`. */
  readonly detail: string | undefined;
  /** The fields at fault (422 validation, 409 conflict); empty otherwise. */
  readonly errors: FieldError[];
  /** The parsed body (JSON), or the raw text when it was not JSON. */
  readonly body: unknown;
  /** The response headers. */
  readonly headers: Headers;

  constructor(status: number, body: unknown, headers: Headers) {
    const p = (body && typeof body === "object" ? body : {}) as Record<string, unknown>;
    const str = (v: unknown) => (typeof v === "string" ? v : undefined);
    const title = str(p.title);
    const detail = str(p.detail);
    super(`${status}${title ? ` ${title}` : ""}${detail ? `: ${detail}` : ""}`);
    this.status = status;
    this.type = str(p.type);
    this.title = title;
    this.detail = detail;
    this.errors = Array.isArray(p.errors) ? (p.errors as FieldError[]) : [];
    this.body = body;
    this.headers = headers;
  }
}

/** `messages.wait` ran out of time before the message reached a final state. */
export class WaitTimeoutError extends Error {
  override readonly name = "WaitTimeoutError";
  /** The message as last seen. */
  readonly last: unknown;
  constructor(message: string, last: unknown) {
    super(message);
    this.last = last;
  }
}
