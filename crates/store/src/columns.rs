//! How kurir's values sit in its columns, for every statement that reads or
//! writes them: the table of a kind, durations as seconds, the stored trace
//! context, provider text made storable, a row's `last_error`, and a
//! message's content as its `body` and `template` columns.

use std::time::Duration;

use kurir_core::{Content, JobKind, LastError, MessageBody, Template, TraceContext};

use crate::{Result, corrupt};

pub(crate) fn table(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Message => "messages",
        JobKind::StatusUpdate => "status_updates",
    }
}

pub(crate) fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// A stored `traceparent` (one this version wrote, or none).
pub(crate) fn trace_of(row: &tokio_postgres::Row) -> Option<TraceContext> {
    row.get::<_, Option<&str>>("traceparent")
        .and_then(TraceContext::parse)
}

/// Text from a provider, made storable: Postgres refuses NUL in text and jsonb.
pub(crate) fn pg_text(raw: &str) -> String {
    raw.replace('\0', "")
}

/// A row's `last_error`, as stored (provider text made storable).
pub(crate) fn error_json(error: &LastError) -> Result<serde_json::Value> {
    let clean = LastError {
        code: pg_text(&error.code),
        detail: pg_text(&error.detail),
        retryable: error.retryable,
    };
    serde_json::to_value(clean).map_err(corrupt)
}

/// A message's `body` and `template` columns (exactly one is set).
pub(crate) fn content(
    body: Option<String>,
    template: Option<serde_json::Value>,
) -> Result<Content> {
    match (body, template) {
        (Some(body), None) => Ok(Content::Text(MessageBody::from_trusted(body))),
        (None, Some(template)) => Template::from_stored(&template)
            .map(Content::Template)
            .map_err(corrupt),
        _ => Err(corrupt(
            "a message with both or neither of body and template",
        )),
    }
}

/// What the `body` and `template` columns hold for `content`.
pub(crate) fn content_columns(content: &Content) -> (Option<&str>, Option<serde_json::Value>) {
    match content {
        Content::Text(body) => (Some(body.as_str()), None),
        Content::Template(template) => (None, Some(template.to_json())),
    }
}
