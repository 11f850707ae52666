//! The error answers of the OpenAPI document: each problem+json response
//! an operation can name (`NotFound`, `Unavailable`, …, one component each)
//! and the lists operations share ([`ReadErrors`], [`ListErrors`],
//! [`WriteErrors`]), so a route names a list instead of repeating it:
//!
//! ```text
//! responses((status = 200, …), ReadErrors)
//! responses((status = 202, …), WriteErrors, NotFound, Conflict, TooManyRequests)
//! ```
//!
//! Each response type is a `ToResponse` (its component, registered once by
//! [`components`]) and an `IntoResponses` (its status, referring to that
//! component); a list is the union of its members' statuses.
//!
//! A leaf: it imports nothing of this crate (the routes name these types;
//! the module that assembles the document, `openapi.rs`, imports the
//! routes).

use std::collections::BTreeMap;

use serde_json::{Value, json};
use utoipa::{
    IntoResponses, ToResponse,
    openapi::{
        self, Ref, RefOr,
        content::ContentBuilder,
        header::HeaderBuilder,
        response::ResponseBuilder,
        schema::{ObjectBuilder, Type},
    },
};

/// A problem+json response described by `description`, with `example`
/// and `headers` (name, type, description).
fn problem(
    description: &str,
    example: Value,
    headers: &[(&str, Type, &str)],
) -> RefOr<openapi::Response> {
    let content = ContentBuilder::new()
        .schema(Some(RefOr::Ref(Ref::from_schema_name("Problem"))))
        .example(Some(example))
        .build();
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/problem+json", content);
    for (name, kind, about) in headers {
        response = response.header(
            *name,
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(kind.clone()))
                .description(Some(*about))
                .build(),
        );
    }
    response.build().into()
}

fn example(status: u16, slug: &str, title: &str, detail: &str) -> Value {
    json!({
        "type": format!("https://kurir.dev/problems/{slug}"),
        "title": title,
        "status": status,
        "detail": detail,
    })
}

const RETRY_AFTER: (&str, Type, &str) = (
    "Retry-After",
    Type::Integer,
    "Seconds to wait before trying again",
);

/// `$name` answers `$status`: the response component `$name`, and the
/// operation's response `$status` referring to it.
macro_rules! problem_responses {
    ($($name:ident($status:literal) => $build:expr;)*) => {
        $(
            pub struct $name;

            impl<'s> ToResponse<'s> for $name {
                fn response() -> (&'s str, RefOr<openapi::Response>) {
                    (stringify!($name), $build)
                }
            }

            impl IntoResponses for $name {
                fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
                    BTreeMap::from([(
                        $status.to_string(),
                        RefOr::Ref(Ref::from_response_name(stringify!($name))),
                    )])
                }
            }
        )*

        /// Every problem response, as the document's `components.responses`.
        pub fn components() -> Vec<(&'static str, RefOr<openapi::Response>)> {
            vec![$(<$name as ToResponse>::response()),*]
        }
    };
}

problem_responses! {
    BadRequest(400) => problem(
        "The body is not JSON (`malformed-json`), or could not be read (`bad-request`)",
        example(400, "malformed-json", "Malformed JSON", "the body is not valid JSON: EOF while parsing an object at line 1 column 1"),
        &[],
    );
    Unauthorized(401) => problem(
        "Missing, unknown or revoked API key (on the webhook: a missing or wrong `X-Hub-Signature-256`)",
        example(401, "unauthorized", "Unauthorized", "send your API key as Authorization: Bearer <key>"),
        &[("WWW-Authenticate", Type::String, "`Bearer`")],
    );
    Forbidden(403) => problem(
        "The handshake's `hub.mode` is not `subscribe` or its `hub.verify_token` is not this server's (or none is set up)",
        example(403, "forbidden", "Forbidden", "hub.verify_token is not this server's KURIR_WHATSAPP_VERIFY_TOKEN"),
        &[],
    );
    NotFound(404) => problem(
        "No such id in this account (another account's id is 404 too)",
        example(404, "not-found", "Not found", "no such user"),
        &[],
    );
    RequestTimeout(408) => problem(
        "The body did not arrive within `KURIR_BODY_TIMEOUT`; the connection is closed",
        example(408, "request-timeout", "Request timeout", "the request body did not arrive within 10s"),
        &[("Connection", Type::String, "`close`")],
    );
    Conflict(409) => problem(
        "A user with this `id` or `phone_number` exists (named in `errors`), or a request with this `Idempotency-Key` was being processed and stored nothing (send it again)",
        json!({
            "type": "https://kurir.dev/problems/conflict", "title": "Conflict", "status": 409,
            "detail": "a user with this phone number exists already",
            "errors": [{"field": "phone_number", "message": "a user with this phone number exists already"}],
        }),
        &[],
    );
    PayloadTooLarge(413) => problem(
        "The body is over `KURIR_MAX_BODY_BYTES` (a `Content-Length` over it is refused before the body is read)",
        example(413, "payload-too-large", "Payload too large", "the request body is over the 1048576 byte limit"),
        &[("Connection", Type::String, "`close`")],
    );
    UnsupportedMediaType(415) => problem(
        "The body is not sent as JSON (`Content-Type: application/json` or `…+json`)",
        example(415, "unsupported-media-type", "Unsupported media type", "send the body as JSON with Content-Type: application/json"),
        &[],
    );
    Unprocessable(422) => problem(
        "Invalid, unknown or repeated fields, query parameters or headers, each named in `errors`; an `Idempotency-Key` used before with a different request",
        json!({
            "type": "https://kurir.dev/problems/validation", "title": "Invalid request", "status": 422,
            "detail": "mesage: unknown field `mesage`, expected `message`",
            "errors": [{"field": "mesage", "message": "unknown field `mesage`, expected `message`"}],
        }),
        &[],
    );
    TooManyRequests(429) => problem(
        "The account is over its intake limit; nothing was accepted",
        example(429, "rate-limited", "Too many requests", "this account may have 2 messages accepted a second, 3 at once (its intake limit); this request needs 1 and 0 are left: retry after 1 s"),
        &[
            RETRY_AFTER,
            ("RateLimit", Type::String, "What is left: `\"intake\";r=<remaining>;t=<seconds until the request fits>`"),
            ("RateLimit-Policy", Type::String, "The limit: `\"intake\";q=<burst>;w=<seconds to fill>`"),
        ],
    );
    Unavailable(503) => problem(
        "Postgres is unreachable or too slow (`KURIR_DB_TIMEOUT`); nothing was accepted",
        example(503, "unavailable", "Service unavailable", "the database is unavailable; try again"),
        &[RETRY_AFTER],
    );
}

/// A list of problem responses an operation names as one.
macro_rules! problem_lists {
    ($($(#[$doc:meta])* $name:ident = $($member:ident),+;)*) => {$(
        $(#[$doc])*
        pub struct $name;

        impl IntoResponses for $name {
            fn responses() -> BTreeMap<String, RefOr<openapi::Response>> {
                let mut responses = BTreeMap::new();
                $(responses.extend(<$member as IntoResponses>::responses());)+
                responses
            }
        }
    )*};
}

problem_lists! {
    /// What reading one thing by its id can answer besides the thing:
    /// no key (401), no such id in the account (404), no database (503).
    ReadErrors = Unauthorized, NotFound, Unavailable;
    /// What a page of a list can answer besides the page: no key (401), an
    /// invalid query (422), no database (503).
    ListErrors = Unauthorized, Unprocessable, Unavailable;
    /// What a POST with a JSON body and an API key can answer before and
    /// besides what it creates: a body that is not JSON (400) or does not
    /// arrive (408) or is too large (413) or is not sent as JSON (415) or is
    /// invalid (422), no key (401), no database (503).
    WriteErrors = BadRequest, Unauthorized, RequestTimeout, PayloadTooLarge,
        UnsupportedMediaType, Unprocessable, Unavailable;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statuses<T: IntoResponses>() -> Vec<String> {
        T::responses().into_keys().collect()
    }

    #[test]
    fn the_lists_hold_their_statuses() {
        assert_eq!(statuses::<ReadErrors>(), ["401", "404", "503"]);
        assert_eq!(statuses::<ListErrors>(), ["401", "422", "503"]);
        assert_eq!(
            statuses::<WriteErrors>(),
            ["400", "401", "408", "413", "415", "422", "503"]
        );
    }

    /// Each response's example is a problem with the status it answers.
    #[test]
    fn every_response_refers_to_its_component_and_shows_its_status() {
        fn check<T: IntoResponses + for<'s> ToResponse<'s>>() {
            let (name, component) = T::response();
            let responses = T::responses();
            let (status, reference) = responses.first_key_value().expect("one status");
            let reference = serde_json::to_value(reference).expect("json");
            assert_eq!(
                reference["$ref"],
                format!("#/components/responses/{name}"),
                "{name}"
            );
            let component = serde_json::to_value(component).expect("json");
            let example = &component["content"]["application/problem+json"]["example"];
            assert_eq!(example["status"].to_string(), *status, "{name}");
        }
        check::<BadRequest>();
        check::<Unauthorized>();
        check::<Forbidden>();
        check::<NotFound>();
        check::<RequestTimeout>();
        check::<Conflict>();
        check::<PayloadTooLarge>();
        check::<UnsupportedMediaType>();
        check::<Unprocessable>();
        check::<TooManyRequests>();
        check::<Unavailable>();
        assert_eq!(components().len(), 11);
    }
}
