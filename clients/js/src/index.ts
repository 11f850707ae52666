export { ApiClient, parseRetryAfter } from "./client.js";
export type * from "./client.js";
export { ApiError, WaitTimeoutError } from "./errors.js";
export type { FieldError } from "./errors.js";
export type { components, paths, operations } from "./schema.js";

import { ApiClient } from "./client.js";
/** The seed imports the client as a default export: `import ApiClient from "…"`. */
export default ApiClient;
