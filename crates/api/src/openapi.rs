//! The OpenAPI 3.1 document of the API, served at `GET /openapi.json`.
//!
//! Generated from the code: each handler carries its `#[utoipa::path]`,
//! each response body (`dto`) and the problem body (`error`) derive
//! `ToSchema`. What utoipa's types cannot say (a send's "`message` or
//! `template`, exactly one", the template's rules, a batch's per-item
//! results) is written here as JSON Schema, next to the code it describes
//! ([`raw_schemas`]). The committed `openapi.json` at the repository root
//! is this document; a test fails when they differ (regenerate it with
//! `KURIR_WRITE_OPENAPI=1 cargo test -p kurir-api openapi`).
//!
//! Who imports whom: this file assembles the document, so it imports the
//! handlers (to list their paths) and nothing imports it; only the crate
//! root names [`serve`], to route `GET /openapi.json` (the root wiring
//! its modules, as it wires every handler). The types the handlers and
//! `dto` name in their annotations live in two leaf modules below this
//! one, which import nothing of the crate: [`schemas`] (the schemas a
//! Rust type cannot derive: the states, read from `kurir_core`'s lists;
//! the request headers; the names of the JSON Schemas written here) and
//! [`problems`] (the problem+json responses and the lists of them routes
//! share). So no file of the crate imports one that imports it back
//! (`scripts/import-cycles` checks it).

pub mod problems;
pub mod schemas;

use std::sync::OnceLock;

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use kurir_core::template::PARAMETER_TYPES;
use serde_json::{Value, json};
use utoipa::{
    Modify, OpenApi,
    openapi::{
        self,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use self::schemas::{
    FieldErrorDoc, LastErrorDoc, MessageStatusDoc, OutcomeDoc, StatusUpdateStateDoc,
};

/// A user id, as a path segment or a field: `[A-Za-z0-9_-]{1,64}`.
pub const USER_ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kurir",
        description = "Send WhatsApp messages and status updates; poll their delivery.\n\n\
            Every `/v1` route except the WhatsApp webhook needs `Authorization: Bearer <api key>`; \
            a key sees only its account's data (another account's id is 404, like an unknown one). \
            Bodies are JSON (`Content-Type: application/json`); unknown fields and unknown query \
            parameters are 422 naming them. Every error is RFC 9457 `application/problem+json`. \
            The server bounds slow clients: a request whose headers do not arrive within \
            `KURIR_HEADER_TIMEOUT` is answered 408 on any route, and one whose body does not \
            arrive within `KURIR_BODY_TIMEOUT` is 408 on the routes that read a body. \
            A method a route does not take is 405.",
        license(name = "MIT", identifier = "MIT"),
    ),
    paths(
        crate::routes::users::list,
        crate::routes::users::create,
        crate::routes::users::get,
        crate::routes::messages::send,
        crate::routes::messages::list,
        crate::routes::batch::send_batch,
        crate::routes::messages::get,
        crate::routes::messages::attempts,
        crate::routes::status_updates::set,
        crate::routes::status_updates::get,
        crate::routes::status_updates::attempts,
        crate::routes::webhooks::handshake,
        crate::routes::webhooks::receive,
        crate::ops::healthz,
        crate::metrics::render,
        crate::ops::readyz,
        serve,
    ),
    components(schemas(
        crate::error::Problem<'_>,
        FieldErrorDoc,
        LastErrorDoc,
        MessageStatusDoc,
        StatusUpdateStateDoc,
        OutcomeDoc,
    )),
    modifiers(&Security, &Problems),
    tags(
        (name = "users", description = "The account's users (the recipients)"),
        (name = "messages", description = "Text and template messages: send, poll, list"),
        (name = "status-updates", description = "A user's status text, set through the provider"),
        (name = "webhooks", description = "WhatsApp's delivery receipts (signed by Meta, no API key)"),
        (name = "operations", description = "Health, readiness and this document (no API key)"),
    )
)]
struct ApiDoc;

/// The `bearer` security scheme the `/v1` operations name.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key from `kurir keys create --account NAME`, as `Authorization: Bearer <key>`",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every problem response the operations refer to, as
/// `components.responses` (from [`problems::components`], their one list).
struct Problems;

impl Modify for Problems {
    fn modify(&self, openapi: &mut openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, response) in problems::components() {
            components.responses.insert(name.to_owned(), response);
        }
    }
}

/// The whole document, as JSON.
pub fn document() -> Value {
    let mut doc = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(doc) => doc,
        Err(err) => unreachable!("an OpenAPI document is JSON: {err}"),
    };
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (name, schema) in raw_schemas() {
            schemas.insert(name.to_owned(), schema);
        }
    }
    doc
}

/// The document as the committed `openapi.json` holds it: pretty, with a
/// final newline.
pub fn document_text() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

/// `GET /openapi.json`: this document (built once).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    operation_id = "openapi",
    summary = "This OpenAPI 3.1 document",
    responses((status = 200, description = "The document", content_type = "application/json", body = Object)),
)]
pub async fn serve() -> Response {
    static TEXT: OnceLock<String> = OnceLock::new();
    let text = TEXT.get_or_init(document_text).clone();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text,
    )
        .into_response()
}

// --- Schemas written as JSON Schema ----------------------------------------

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

/// Characters kurir refuses in one-line texts: Unicode's control
/// characters (`char::is_control`).
const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";

/// A text of `min..=max` characters with none of `refused`, and not blank
/// (all whitespace) if `not_blank`.
fn text(min: usize, max: usize, refused: &str, not_blank: bool) -> Value {
    let blank = if not_blank { r"(?=[\s\S]*\S)" } else { "" };
    json!({
        "type": "string",
        "minLength": min,
        "maxLength": max,
        "pattern": format!("^{blank}[^{refused}]*$"),
    })
}

/// The body of a text message (`kurir_core::MessageBody`): 1–4096
/// characters, not blank; line breaks and tabs but no other control
/// characters.
fn message_body() -> Value {
    text(
        1,
        kurir_core::MessageBody::MAX_CHARS,
        r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f",
        true,
    )
}

/// A template variable's text: 1–1,024 characters, not blank, no control
/// characters, no more than four spaces in a row.
fn template_text() -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": kurir_core::template::MAX_PARAMETER_CHARS,
        "pattern": format!(r"^(?=[\s\S]*\S)(?![\s\S]*     )[^{CONTROL}]*$"),
    })
}

/// `messages`' items and a send's content: `message` (text) or
/// `template`, exactly one (a null one counts as absent).
fn content_properties() -> (Value, Value) {
    let mut message = message_body();
    message["type"] = json!(["string", "null"]);
    let properties = json!({
        "message": message,
        "template": {"anyOf": [schema_ref("Template"), {"type": "null"}]},
    });
    let one_of = json!([
        {"required": ["message"], "properties": {"message": {"type": "string"}, "template": {"type": "null"}}},
        {"required": ["template"], "properties": {"template": {"type": "object"}, "message": {"type": "null"}}},
    ]);
    (properties, one_of)
}

/// What utoipa's types cannot express (`not`, `if`/`then`, type lists,
/// `oneOf` beside `properties`), as JSON Schema 2020-12.
pub fn raw_schemas() -> Vec<(&'static str, Value)> {
    let parameter_checks: Vec<Value> = PARAMETER_TYPES
        .iter()
        .filter(|kind| !matches!(**kind, "text" | "payload" | "coupon_code"))
        .map(|kind| {
            json!({
                "if": {"properties": {"type": {"const": kind}}},
                "then": {"required": [kind]},
            })
        })
        .chain(std::iter::once(json!({
            "if": {"properties": {"type": {"const": "text"}}},
            "then": {
                "required": ["text"],
                "properties": {
                    "text": template_text(),
                    "parameter_name": {"type": "string", "pattern": "^[a-z0-9_]+$"},
                },
            },
        })))
        .collect();
    let (content, exactly_one) = content_properties();
    let mut item_properties = content.clone();
    item_properties["user_id"] = json!({"type": "string", "pattern": USER_ID_PATTERN});
    item_properties["idempotency_key"] = json!({
        "type": ["string", "null"],
        "pattern": "^[ -~]{1,255}$",
        "description": "Makes this item idempotent by itself: a repeat gets the item's first result.",
    });
    vec![
        (
            "Template",
            json!({
                "description": "An approved WhatsApp template: `parameters` (the body's positional variables) or `components` (Meta's own shape, checked and then passed through), not both; neither for a template without variables.",
                "type": "object",
                "additionalProperties": false,
                "required": ["name", "language"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9_]{1,512}$"},
                    "language": {"type": "string", "pattern": "^[a-z]{2,3}(_[A-Z]{2})?$", "description": "A locale code: `en_US`, `id`, `pt_BR`."},
                    "parameters": {"type": "array", "maxItems": 100, "items": template_text()},
                    "components": {"type": "array", "maxItems": 100, "items": schema_ref("TemplateComponent")},
                },
                "not": {"required": ["parameters", "components"]},
                "examples": [
                    {"name": "order_update", "language": "id", "parameters": ["Budi", "#1234"]},
                    {"name": "order_update", "language": "en_US", "components": [
                        {"type": "body", "parameters": [{"type": "text", "text": "Ada"}, {"type": "text", "text": "#99"}]}]},
                    {"name": "hello_world", "language": "en_US"},
                ],
            }),
        ),
        (
            "TemplateComponent",
            json!({
                "description": "One of Meta's template components: a header, the body, or a button (which names its `sub_type` and `index`).",
                "type": "object",
                "additionalProperties": false,
                "required": ["type"],
                "properties": {
                    "type": {"enum": ["header", "body", "button"]},
                    "sub_type": {},
                    "index": {},
                    "parameters": {"type": "array", "maxItems": 100, "items": schema_ref("TemplateParameter")},
                },
                "if": {"properties": {"type": {"const": "button"}}},
                "then": {
                    "required": ["sub_type", "index"],
                    "properties": {
                        "sub_type": {"type": "string"},
                        "index": {"anyOf": [
                            {"type": "string", "pattern": "^[0-9]$"},
                            {"type": "integer", "minimum": 0, "maximum": 9},
                        ]},
                    },
                },
            }),
        ),
        (
            "TemplateParameter",
            json!({
                "description": "A component's parameter, in Meta's shape: its `type`, and the field of that name (`text`, `currency`, `image`…; optional for `payload` and `coupon_code`).",
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"enum": PARAMETER_TYPES}},
                "allOf": parameter_checks,
            }),
        ),
        (
            "SendMessage",
            json!({
                "description": "A text (`message`) or a template (`template`): exactly one of them.",
                "type": "object",
                "additionalProperties": false,
                "properties": content,
                "oneOf": exactly_one,
            }),
        ),
        (
            "BatchItem",
            json!({
                "description": "One message of a batch, checked as a lone send would be.",
                "type": "object",
                "additionalProperties": false,
                "required": ["user_id"],
                "properties": item_properties,
                "oneOf": exactly_one,
            }),
        ),
        (
            "SendBatch",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["messages"],
                "properties": {
                    "messages": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": crate::routes::batch::MAX_BATCH,
                        "description": "Each item should be a `BatchItem`; an item that is not (not an object, an unknown field, an invalid value) gets an error result of its own and does not fail the batch.",
                        "items": {"anyOf": [schema_ref("BatchItem"), {}]},
                    },
                },
            }),
        ),
        (
            "BatchResult",
            json!({
                "description": "An item's result: accepted, or why not (the problem a lone send would have got).",
                "oneOf": [
                    schema_ref("Accepted"),
                    {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["error"],
                        "properties": {"error": schema_ref("Problem")},
                    },
                ],
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const REGENERATE: &str = "KURIR_WRITE_OPENAPI=1 cargo test -p kurir-api openapi";

    fn committed_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../openapi.json")
    }

    #[test]
    fn the_committed_openapi_json_is_what_the_code_generates() {
        let generated = document_text();
        let path = committed_path();
        if std::env::var_os("KURIR_WRITE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("write openapi.json");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "openapi.json at the repository root is not what the code generates; regenerate it with `{REGENERATE}` and commit it"
        );
    }

    #[test]
    fn the_document_is_openapi_3_1() {
        let doc = document();
        let version = doc["openapi"].as_str().unwrap_or_default();
        assert!(version.starts_with("3.1"), "openapi is {version:?}");
    }

    /// The states the document lists are those `kurir_core` has, in its
    /// order, wherever the document names them.
    #[test]
    fn the_documented_states_are_the_cores() {
        use kurir_core::{MessageStatus, StatusUpdateState};

        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let statuses: Vec<&str> = MessageStatus::ALL.map(MessageStatus::as_str).to_vec();
        assert_eq!(schemas["MessageStatus"]["enum"], json!(statuses));
        let mut states: Vec<&str> = Vec::new();
        for state in StatusUpdateState::ALL.map(StatusUpdateState::public) {
            if !states.contains(&state) {
                states.push(state);
            }
        }
        assert_eq!(schemas["StatusUpdateState"]["enum"], json!(states));
        assert_eq!(states, ["queued", "success", "failed"]);
        for (schema, field, state) in [
            ("Message", "message_status", "MessageStatus"),
            ("Accepted", "message_status", "MessageStatus"),
            ("StatusUpdate", "status_update", "StatusUpdateState"),
            ("StatusAccepted", "status_update", "StatusUpdateState"),
        ] {
            assert_eq!(
                schemas[schema]["properties"][field]["$ref"],
                format!("#/components/schemas/{state}"),
                "{schema}.{field}"
            );
        }
        // `?status=` on a list of messages: one of them, or empty.
        let status_filter = doc["paths"]["/v1/users/{id}/messages"]["get"]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|parameter| parameter["name"] == "status")
            .expect("a status parameter");
        assert_eq!(
            status_filter["schema"]["pattern"],
            format!("^(|{})$", statuses.join("|"))
        );
    }

    /// Each placeholder of a schema written as JSON Schema is replaced.
    #[test]
    fn every_raw_schema_is_written() {
        let doc = document();
        let written: BTreeSet<&str> = raw_schemas().into_iter().map(|(name, _)| name).collect();
        for name in schemas::RAW_SCHEMA_NAMES {
            assert!(written.contains(name), "{name} has no JSON Schema");
            let description = doc["components"]["schemas"][name]["description"]
                .as_str()
                .unwrap_or_default();
            assert!(!description.starts_with("See "), "{name}: {description}");
        }
    }

    /// Every response an operation refers to is a component.
    #[test]
    fn every_referenced_response_exists() {
        let doc = document();
        let components = doc["components"]["responses"]
            .as_object()
            .expect("responses");
        assert_eq!(components.len(), problems::components().len());
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                for (status, response) in op["responses"].as_object().expect("responses") {
                    if let Some(reference) = response["$ref"].as_str() {
                        let name = reference
                            .strip_prefix("#/components/responses/")
                            .unwrap_or(reference);
                        assert!(
                            components.contains_key(name),
                            "{method} {path} {status}: {reference}"
                        );
                    }
                }
            }
        }
    }

    /// Every `.route("path", method(…)…)` in `source`, as (path, method).
    fn routes_in(source: &str, prefix: &str) -> BTreeSet<(String, String)> {
        let mut routes = BTreeSet::new();
        for (at, _) in source.match_indices(".route(") {
            let rest = &source[at + ".route(".len()..];
            let Some(open) = rest.find('"') else { continue };
            let Some(len) = rest[open + 1..].find('"') else {
                continue;
            };
            let path = &rest[open + 1..open + 1 + len];
            // The route's methods: up to the parenthesis that closes `.route(`.
            let mut depth = 1;
            let mut end = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let methods = &rest[open + 1 + len..end];
            for method in ["get", "post", "put", "patch", "delete"] {
                let called = methods.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0 || !methods[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_')
                });
                if called {
                    routes.insert((format!("{prefix}{path}"), method.to_owned()));
                }
            }
        }
        routes
    }

    #[test]
    fn every_route_of_the_router_is_documented() {
        let lib = include_str!("lib.rs");
        // The `/v1` router is the one built before `.nest("/v1", v1)`.
        let (v1, outer) = lib
            .split_once(".nest(\"/v1\", v1)")
            .expect("lib.rs nests the /v1 router");
        let mut routes = routes_in(v1, "/v1");
        routes.extend(routes_in(outer, ""));
        routes.extend(routes_in(include_str!("ops.rs"), ""));
        assert!(routes.len() >= 16, "found only {routes:?}");
        let doc = document();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .into_iter()
                    .flat_map(|ops| ops.keys())
                    .map(move |method| (path.clone(), method.clone()))
            })
            .collect();
        let missing: Vec<_> = routes.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "routes without an OpenAPI operation (add #[utoipa::path] and list them in openapi.rs, then `{REGENERATE}`): {missing:?}"
        );
        let stale: Vec<_> = documented.difference(&routes).collect();
        assert!(stale.is_empty(), "documented but not routed: {stale:?}");
    }

    #[test]
    fn every_operation_has_an_id_and_documents_its_errors_as_problems() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                assert!(op["operationId"].is_string(), "{method} {path}");
                for (status, response) in op["responses"].as_object().expect("responses") {
                    // Readiness answers 503 with its own body, as health checks expect.
                    let readiness = path == "/readyz";
                    if (status.starts_with('4') || status.starts_with('5')) && !readiness {
                        let reference = response["$ref"].as_str().unwrap_or_default();
                        let inline = response["content"]["application/problem+json"].is_object();
                        assert!(
                            reference.starts_with("#/components/responses/") || inline,
                            "{method} {path} {status} is not problem+json"
                        );
                    }
                }
            }
        }
    }
}
