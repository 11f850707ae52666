//! The OpenAPI types of values whose Rust type cannot derive its own
//! schema: a state kept as `&'static str` in a response (`MessageStatus`,
//! `StatusUpdateState`, `Outcome`), the `kurir_core` types the API shows
//! as they are (`LastError`, `FieldError`), the headers the seed POSTs
//! read, `/healthz`'s body, and the names of the schemas written as JSON
//! Schema (`Template`, `SendMessage`, …).
//!
//! A leaf: it imports nothing of this crate, so `dto`, `error` and the
//! routes name these types without importing the module that assembles
//! the document (`openapi.rs`, which imports the routes to list their
//! paths). The error responses are [`super::problems`], another leaf.
//!
//! The states' values are not written here: they are read from the types
//! the API serializes ([`MessageStatus::ALL`], [`StatusUpdateState::ALL`],
//! [`OUTCOMES`]) when the document is built, so the document cannot list
//! a state the API does not answer with, or miss one.

use std::borrow::Cow;

use kurir_core::{MessageStatus, StatusUpdateState};
use kurir_store::pipeline::AttemptOutcome;
use utoipa::{
    IntoParams, PartialSchema, ToSchema,
    openapi::{
        RefOr, Schema,
        schema::{ObjectBuilder, Type},
    },
};

// --- Request headers -------------------------------------------------------

/// `Idempotency-Key` on a POST that creates.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyHeader {
    /// 1–255 visible ASCII characters (inner spaces allowed). The same key
    /// with the same request within 24 hours returns the first response
    /// (`Idempotent-Replayed: true`) and creates nothing; with a different
    /// request it is 422. Keys belong to the account.
    #[param(rename = "Idempotency-Key", value_type = String, required = false,
        pattern = "^[!-~]([ -~]{0,253}[!-~])?$", example = "order-42-reminder")]
    pub idempotency_key: Option<String>,
}

/// `Idempotency-Key` and `Prefer: wait=N` on the seed POSTs.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct SeedPostHeaders {
    /// 1–255 visible ASCII characters (inner spaces allowed). The same key
    /// with the same request within 24 hours returns the first response
    /// (`Idempotent-Replayed: true`) and creates nothing; with a different
    /// request it is 422. Keys belong to the account.
    #[param(rename = "Idempotency-Key", value_type = String, required = false,
        pattern = "^[!-~]([ -~]{0,253}[!-~])?$", example = "order-42-reminder")]
    pub idempotency_key: Option<String>,
    /// RFC 7240 preferences, of which kurir reads `wait=N`: hold the answer
    /// until the request is over (200) or N seconds pass (202). N is whole
    /// seconds, at most 30 (more waits 30); `wait=0`, a `wait` that is not a
    /// number and any other preference ask for nothing (never an error).
    #[param(rename = "Prefer", value_type = String, required = false, example = "wait=10")]
    pub prefer: Option<String>,
}

// --- States ----------------------------------------------------------------

/// A string schema named `name`, described by `description`, whose values
/// are `values` in their order.
fn string_enum<'v>(description: &str, values: impl IntoIterator<Item = &'v str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(values))
        .into()
}

/// Implements `ToSchema` for `$ty` as the string enum `$name` of `$values`.
macro_rules! state_schema {
    ($($(#[$doc:meta])* $ty:ident => $name:literal, $description:expr, $values:expr;)*) => {$(
        $(#[$doc])*
        pub struct $ty;

        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                string_enum($description, $values)
            }
        }

        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                $name.into()
            }
        }
    )*};
}

/// The values of `message_status`, in [`MessageStatus::ALL`]'s order.
pub fn message_statuses() -> impl Iterator<Item = &'static str> {
    MessageStatus::ALL.into_iter().map(MessageStatus::as_str)
}

/// The values of `status_update`: what [`StatusUpdateState::public`] makes
/// of [`StatusUpdateState::ALL`], each once, in that order (`sending` is
/// internal and shows as `queued`).
pub fn status_update_states() -> Vec<&'static str> {
    let mut states = Vec::new();
    for state in StatusUpdateState::ALL.map(StatusUpdateState::public) {
        if !states.contains(&state) {
            states.push(state);
        }
    }
    states
}

/// Every outcome an attempt is recorded with, in the document's order
/// (`kurir_store` has no list of its own; [`every_outcome_is_listed`] makes
/// a new one a compile error until it is added here).
pub const OUTCOMES: [AttemptOutcome; 3] = [
    AttemptOutcome::Delivered,
    AttemptOutcome::Retryable,
    AttemptOutcome::Permanent,
];

/// Fails to compile when `AttemptOutcome` gets an outcome [`OUTCOMES`]
/// may not list.
const fn every_outcome_is_listed(outcome: AttemptOutcome) {
    match outcome {
        AttemptOutcome::Delivered | AttemptOutcome::Retryable | AttemptOutcome::Permanent => {}
    }
}
const _: () = every_outcome_is_listed(AttemptOutcome::Delivered);

state_schema! {
    /// `message_status` (`kurir_core::MessageStatus`).
    MessageStatusDoc => "MessageStatus",
        "A message's state; it only moves forward: `queued → sending → sent →\ndelivered → read`, or `failed`.",
        message_statuses();
    /// `status_update` (`kurir_core::StatusUpdateState`, as clients see it).
    StatusUpdateStateDoc => "StatusUpdateState", "A status update's state.", status_update_states();
    /// An attempt's `outcome` (`kurir_store::pipeline::AttemptOutcome`).
    OutcomeDoc => "Outcome", "How one provider call ended.", OUTCOMES.map(AttemptOutcome::as_str);
}

// --- kurir_core types the API shows as they are ----------------------------

/// One invalid field of a request: its path (`template.parameters[1]`,
/// `Idempotency-Key`, a query parameter) and what is wrong with it.
#[derive(ToSchema)]
#[schema(as = FieldError)]
pub struct FieldErrorDoc {
    pub field: String,
    pub message: String,
}

/// Why the last attempt failed (`kurir_core::LastError`).
#[derive(ToSchema)]
#[schema(as = LastError)]
pub struct LastErrorDoc {
    /// The provider's code (`"131026"`) or one of kurir's (`timeout`,
    /// `connect`, `http_503`, `expired`).
    pub code: String,
    pub detail: String,
    /// Whether kurir will try again (or would have, before giving up).
    pub retryable: bool,
}

/// `GET /healthz`.
#[derive(ToSchema)]
pub struct Health {
    #[schema(value_type = String, pattern = "^ok$")]
    pub status: String,
}

// --- Schemas written as JSON Schema ----------------------------------------

/// Types whose schema is written as JSON Schema where the document is
/// assembled (`openapi::raw_schemas`): utoipa refers to them by name; the
/// document replaces the placeholder here with that JSON Schema.
macro_rules! raw_schema {
    ($($(#[$doc:meta])* $ty:ident => $name:literal;)*) => {
        $(
            $(#[$doc])*
            pub struct $ty;

            impl PartialSchema for $ty {
                fn schema() -> RefOr<Schema> {
                    ObjectBuilder::new().description(Some(concat!("See ", $name))).into()
                }
            }

            impl ToSchema for $ty {
                fn name() -> Cow<'static, str> {
                    $name.into()
                }
            }
        )*

        /// The names of the schemas written as JSON Schema that the types
        /// here stand for.
        pub const RAW_SCHEMA_NAMES: &[&str] = &[$($name),*];
    };
}

raw_schema! {
    /// `template` on a send or a batch item (`kurir_core::Template`).
    TemplateDoc => "Template";
    /// The body of `POST /v1/users/{id}/messages` (`SendMessage`).
    SendMessageDoc => "SendMessage";
    /// The body of `POST /v1/messages/batch` (`SendBatch`).
    SendBatchDoc => "SendBatch";
    /// One result of a batch (`dto::BatchResult`).
    BatchResultDoc => "BatchResult";
}

#[cfg(test)]
mod tests {
    use kurir_core::LastError;

    use super::*;

    fn values(schema: RefOr<Schema>) -> Vec<String> {
        let json = serde_json::to_value(schema).expect("a schema is JSON");
        serde_json::from_value(json["enum"].clone()).expect("an enum of strings")
    }

    #[test]
    fn the_message_status_enum_is_the_cores() {
        let expected: Vec<String> = MessageStatus::ALL.iter().map(|s| s.to_string()).collect();
        assert_eq!(values(MessageStatusDoc::schema()), expected);
    }

    #[test]
    fn the_status_update_state_enum_is_what_the_core_shows() {
        assert_eq!(
            values(StatusUpdateStateDoc::schema()),
            ["queued", "success", "failed"]
        );
        for state in StatusUpdateState::ALL {
            assert!(
                status_update_states().contains(&state.public()),
                "{state:?}"
            );
        }
    }

    /// `MessageStatus::ALL` and `StatusUpdateState::ALL` hold every
    /// variant, once: the matches stop compiling when a variant is added,
    /// and name the place in `ALL` each one must have.
    #[test]
    fn the_cores_lists_hold_every_state_once() {
        use MessageStatus as M;
        use StatusUpdateState as S;

        for (at, status) in MessageStatus::ALL.into_iter().enumerate() {
            let place = match status {
                M::Queued => 0,
                M::Sending => 1,
                M::Sent => 2,
                M::Delivered => 3,
                M::Read => 4,
                M::Failed => 5,
            };
            assert_eq!(place, at, "{status:?}");
        }
        assert_eq!(MessageStatus::ALL.len(), 6);
        for (at, state) in StatusUpdateState::ALL.into_iter().enumerate() {
            let place = match state {
                S::Queued => 0,
                S::Sending => 1,
                S::Success => 2,
                S::Failed => 3,
            };
            assert_eq!(place, at, "{state:?}");
        }
        assert_eq!(StatusUpdateState::ALL.len(), 4);
    }

    #[test]
    fn the_outcome_enum_is_the_stores() {
        assert_eq!(
            values(OutcomeDoc::schema()),
            ["delivered", "retryable", "permanent"]
        );
    }

    /// The fields `value` serializes with, and those `schema` documents.
    fn fields(value: impl serde::Serialize, schema: RefOr<Schema>) -> (Vec<String>, Vec<String>) {
        let value = serde_json::to_value(value).expect("json");
        let schema = serde_json::to_value(schema).expect("json");
        let keys = |object: &serde_json::Value| {
            let mut keys: Vec<String> = object
                .as_object()
                .expect("an object")
                .keys()
                .cloned()
                .collect();
            keys.sort();
            keys
        };
        (keys(&value), keys(&schema["properties"]))
    }

    /// The hand-written schemas of `kurir_core` types have the fields those
    /// types serialize.
    #[test]
    fn core_types_have_the_documented_fields() {
        let error = LastError {
            code: "timeout".into(),
            detail: "no answer".into(),
            retryable: true,
        };
        let (serialized, documented) = fields(error, LastErrorDoc::schema());
        assert_eq!(serialized, documented);
        let field = kurir_core::FieldError::new("message", "must not be blank");
        let (serialized, documented) = fields(field, FieldErrorDoc::schema());
        assert_eq!(serialized, documented);
    }
}
