//! The JSON the API answers with (`*Json`; `kurir_core` owns the values
//! inside, such as `MessageBody`, the text of a message). Seed fields keep
//! the seed document's names (`id`, `name`, `phone_number`, `profile_image`,
//! `status`, `message_status`, `status_update`). Timestamps are RFC 3339 UTC
//! with milliseconds.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, SecondsFormat, Utc};
use kurir_core::{LastError, MessageStatus, Template};
use kurir_store::{
    messages::Message, pipeline::AttemptRecord, status_updates::StatusUpdate, users::User,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use utoipa::ToSchema;

use crate::{
    error::ApiError,
    openapi::schemas::{
        BatchResultDoc, LastErrorDoc, MessageStatusDoc, OutcomeDoc, StatusUpdateStateDoc,
        TemplateDoc,
    },
};

fn ts<S: Serializer>(value: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&value.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn ts_opt<S: Serializer>(value: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => ts(value, serializer),
        None => serializer.serialize_none(),
    }
}

/// A user (the seed's fields first).
#[derive(Serialize, ToSchema)]
#[schema(as = User, examples(json!({
    "id": "user123", "name": "John Doe", "phone_number": "+62123456789",
    "profile_image": "https://example.com/users/user123.jpg", "status": "online",
    "created_at": "2026-05-01T08:00:00.000Z", "updated_at": "2026-05-01T08:00:00.000Z",
    "window_open_until": null
})))]
pub struct UserJson {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub id: String,
    pub name: String,
    /// E.164: `+` then 7 to 15 digits.
    pub phone_number: String,
    /// An absolute http(s) URL, or null.
    #[schema(required = true, format = "uri")]
    pub profile_image: Option<String>,
    /// Free text, at most 139 characters (may be empty).
    pub status: String,
    #[serde(serialize_with = "ts")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "ts")]
    pub updated_at: DateTime<Utc>,
    /// Until when WhatsApp takes free-form text for the user: 24 hours
    /// after they last wrote to the business, if kurir heard of it (its
    /// receipts webhook); `null` if it does not know.
    #[serde(serialize_with = "ts_opt")]
    #[schema(required = true)]
    pub window_open_until: Option<DateTime<Utc>>,
}

impl From<User> for UserJson {
    fn from(user: User) -> Self {
        Self {
            id: user.id.to_string(),
            name: user.name.into_inner(),
            phone_number: user.phone_number.into_inner(),
            profile_image: user.profile_image.map(|image| image.into_inner()),
            status: user.status.into_inner(),
            created_at: user.created_at,
            updated_at: user.updated_at,
            window_open_until: user.window_open_until,
        }
    }
}

/// A page of users, in creation order.
#[derive(Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserJson>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// A message and its delivery state: `message` for a text, `template` for
/// a template (exactly one of them).
#[derive(Serialize, ToSchema)]
#[schema(as = Message, examples(json!({
    "message_id": "0193b1f2-7c1e-7d3a-9a57-6f0c2a1e4b10", "user_id": "user123", "message": "Halo!",
    "message_status": "sent", "attempts": 1, "next_attempt_at": null, "last_error": null,
    "provider_message_id": "wamid.HBgLNjIxMjM0NTY3ODkVAgARGBI", "created_at": "2026-05-01T08:00:00.000Z",
    "updated_at": "2026-05-01T08:00:00.120Z", "sent_at": "2026-05-01T08:00:00.120Z",
    "delivered_at": null, "read_at": null, "failed_at": null
})))]
pub struct MessageJson {
    #[schema(format = "uuid")]
    pub message_id: String,
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub user_id: String,
    /// The text, for a text message (the seed's field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The template, for a template message, as it was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = TemplateDoc, required = false)]
    pub template: Option<serde_json::Value>,
    #[schema(value_type = MessageStatusDoc)]
    pub message_status: &'static str,
    /// Provider calls made so far.
    #[schema(minimum = 0)]
    pub attempts: i32,
    /// When a waiting retry is due; `null` otherwise.
    #[serde(serialize_with = "ts_opt")]
    #[schema(required = true)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Why the last attempt failed, while a retry waits or once the message
    /// `failed`; `null` once it is sent.
    #[schema(value_type = Option<LastErrorDoc>, required = true)]
    pub last_error: Option<LastError>,
    /// WhatsApp's id (`wamid.…`) once it took the message.
    #[schema(required = true)]
    pub provider_message_id: Option<String>,
    #[serde(serialize_with = "ts")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "ts")]
    pub updated_at: DateTime<Utc>,
    #[serde(serialize_with = "ts_opt")]
    #[schema(required = true)]
    pub sent_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "ts_opt")]
    #[schema(required = true)]
    pub delivered_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "ts_opt")]
    #[schema(required = true)]
    pub read_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "ts_opt")]
    #[schema(required = true)]
    pub failed_at: Option<DateTime<Utc>>,
}

impl From<Message> for MessageJson {
    fn from(message: Message) -> Self {
        Self {
            message_id: message.id.to_string(),
            user_id: message.user_id.to_string(),
            message: message.content.text().map(|body| body.as_str().to_owned()),
            template: message.content.template().map(Template::to_json),
            message_status: message.status.as_str(),
            attempts: message.attempts,
            next_attempt_at: message.next_attempt_at,
            last_error: message.last_error,
            provider_message_id: message.provider_message_id,
            created_at: message.created_at,
            updated_at: message.updated_at,
            sent_at: message.sent_at,
            delivered_at: message.delivered_at,
            read_at: message.read_at,
            failed_at: message.failed_at,
        }
    }
}

/// A page of a user's messages, newest first.
#[derive(Serialize, ToSchema)]
pub struct MessageList {
    pub messages: Vec<MessageJson>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// The seed's answer to a send: `{"message_id","message_status"}`, and a
/// `warning` when kurir expects WhatsApp to refuse it.
#[derive(Serialize, ToSchema)]
#[schema(examples(json!({"message_id": "0193b1f2-7c1e-7d3a-9a57-6f0c2a1e4b10", "message_status": "queued"})))]
pub struct Accepted {
    #[schema(format = "uuid")]
    pub message_id: String,
    /// `queued` at once; after `Prefer: wait`, the state then.
    #[schema(value_type = MessageStatusDoc)]
    pub message_status: &'static str,
    /// Set when kurir expects WhatsApp to refuse the message (a text to a
    /// user whose 24-hour window is known to be closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub warning: Option<&'static str>,
}

/// The `warning` of a text accepted for a user whose 24-hour window is
/// known to be closed.
pub const OUTSIDE_WINDOW: &str = "the user last wrote more than 24 hours ago (as far as kurir knows), so WhatsApp will likely refuse free-form text (131047): send a template instead";

/// A status update and its delivery state.
#[derive(Serialize, ToSchema)]
#[schema(as = StatusUpdate, examples(json!({
    "status_update_id": "0193b1f3-0a4d-7b1c-8e2f-3d4c5b6a7980", "user_id": "user123",
    "status": "Sedang sibuk dalam rapat.", "status_update": "success", "attempts": 1,
    "next_attempt_at": null, "last_error": null,
    "created_at": "2026-05-01T08:00:00.000Z", "updated_at": "2026-05-01T08:00:00.090Z"
})))]
pub struct StatusUpdateJson {
    #[schema(format = "uuid")]
    pub status_update_id: String,
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub user_id: String,
    /// The new status text.
    pub status: String,
    #[schema(value_type = StatusUpdateStateDoc)]
    pub status_update: &'static str,
    #[schema(minimum = 0)]
    pub attempts: i32,
    #[serde(serialize_with = "ts_opt")]
    #[schema(required = true)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[schema(value_type = Option<LastErrorDoc>, required = true)]
    pub last_error: Option<LastError>,
    #[serde(serialize_with = "ts")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "ts")]
    pub updated_at: DateTime<Utc>,
}

impl From<StatusUpdate> for StatusUpdateJson {
    fn from(update: StatusUpdate) -> Self {
        Self {
            status_update_id: update.id.to_string(),
            user_id: update.user_id.to_string(),
            status: update.status.into_inner(),
            status_update: update.state.public(),
            attempts: update.attempts,
            next_attempt_at: update.next_attempt_at,
            last_error: update.last_error,
            created_at: update.created_at,
            updated_at: update.updated_at,
        }
    }
}

/// One item's result in `POST /v1/messages/batch`: accepted (the seed's
/// answer to a send) or why not (a problem, as a lone request would get).
#[derive(Serialize)]
#[serde(untagged)]
pub enum BatchResult {
    Accepted(Accepted),
    /// An item's first result, kept under its key.
    Replayed(serde_json::Value),
    Error {
        error: serde_json::Value,
    },
}

/// `POST /v1/messages/batch`: one result per item, in order.
#[derive(Serialize, ToSchema)]
pub struct BatchResults {
    #[schema(value_type = Vec<BatchResultDoc>)]
    pub results: Vec<BatchResult>,
}

/// The seed's answer to a status update: `{"status_update_id","status_update"}`.
#[derive(Serialize, ToSchema)]
#[schema(examples(json!({"status_update_id": "0193b1f3-0a4d-7b1c-8e2f-3d4c5b6a7980", "status_update": "queued"})))]
pub struct StatusAccepted {
    #[schema(format = "uuid")]
    pub status_update_id: String,
    /// `queued` at once; after `Prefer: wait`, the state then.
    #[schema(value_type = StatusUpdateStateDoc)]
    pub status_update: &'static str,
}

/// One delivery attempt: a real provider call and how it ended.
#[derive(Serialize, ToSchema)]
#[schema(as = Attempt)]
pub struct AttemptJson {
    /// 1 for the first attempt.
    #[schema(minimum = 1)]
    pub number: i32,
    #[serde(serialize_with = "ts")]
    pub started_at: DateTime<Utc>,
    #[schema(minimum = 0)]
    pub latency_ms: i32,
    /// `delivered`, `retryable` or `permanent`.
    #[schema(value_type = OutcomeDoc)]
    pub outcome: &'static str,
    /// The provider's HTTP status, if it answered.
    #[schema(required = true)]
    pub http_status: Option<i32>,
    /// The provider's error code (`"131026"`) or kurir's (`timeout`, `connect`).
    #[schema(required = true)]
    pub code: Option<String>,
    #[schema(required = true)]
    pub detail: Option<String>,
}

impl From<AttemptRecord> for AttemptJson {
    fn from(attempt: AttemptRecord) -> Self {
        Self {
            number: attempt.attempt,
            started_at: attempt.started_at,
            latency_ms: attempt.latency_ms,
            outcome: attempt.outcome.as_str(),
            http_status: attempt.http_status,
            code: attempt.error_code,
            detail: attempt.error_detail,
        }
    }
}

/// `GET …/attempts`: oldest first.
#[derive(Serialize, ToSchema)]
#[schema(examples(json!({"attempts": [
    {"number": 1, "started_at": "2026-05-01T08:00:00.010Z", "latency_ms": 3, "outcome": "retryable",
     "http_status": 503, "code": "131016", "detail": "(#131016) Service unavailable"},
    {"number": 2, "started_at": "2026-05-01T08:00:02.010Z", "latency_ms": 2, "outcome": "delivered",
     "http_status": 200, "code": null, "detail": null}
]})))]
pub struct AttemptList {
    pub attempts: Vec<AttemptJson>,
}

impl From<Vec<AttemptRecord>> for AttemptList {
    fn from(attempts: Vec<AttemptRecord>) -> Self {
        Self {
            attempts: attempts.into_iter().map(AttemptJson::from).collect(),
        }
    }
}

/// Opaque page cursors: `base64url("<tag>:<position>")`. The tag stops a
/// cursor from one list being used on another.
pub fn encode_cursor(tag: &str, position: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{tag}:{position}"))
}

pub fn decode_cursor(tag: &str, cursor: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::field("cursor", "is not a cursor this list gave out");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (found, position) = text.split_once(':').ok_or_else(invalid)?;
    if found != tag {
        return Err(invalid());
    }
    Ok(position.to_owned())
}

/// A page size from the query: 1 to 1000, 100 when not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub i64);

impl Default for Limit {
    fn default() -> Self {
        Limit(100)
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        match raw.parse::<i64>() {
            Ok(limit) if (1..=1000).contains(&limit) => Ok(Limit(limit)),
            _ => Err(de::Error::custom("must be a whole number from 1 to 1000")),
        }
    }
}

/// `?status=` on a list of messages: one of the states; empty means any.
pub fn status_filter<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<MessageStatus>, D::Error> {
    let raw = String::deserialize(deserializer)?;
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse().map(Some).map_err(|_| {
        let states = MessageStatus::ALL.map(MessageStatus::as_str).join(", ");
        de::Error::custom(format!("must be one of {states}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::parse_query;

    #[test]
    fn cursors_round_trip_and_are_tagged() {
        let cursor = encode_cursor("u", "42");
        assert_eq!(decode_cursor("u", &cursor).unwrap(), "42");
        assert!(decode_cursor("m", &cursor).is_err());
        assert!(decode_cursor("u", "!!").is_err());
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Query {
        #[serde(default)]
        limit: Limit,
        #[serde(default, deserialize_with = "status_filter")]
        status: Option<MessageStatus>,
    }

    fn problem_field(query: &str) -> (u16, String) {
        let err = parse_query::<Query>(query).unwrap_err();
        (err.status().as_u16(), err.errors()[0].field.clone())
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(parse_query::<Query>("").unwrap().limit, Limit(100));
        assert_eq!(
            parse_query::<Query>("limit=1000").unwrap().limit,
            Limit(1000)
        );
        for bad in ["0", "1001", "-1", "ten", "", "1.5"] {
            assert_eq!(
                problem_field(&format!("limit={bad}")),
                (422, "limit".to_owned()),
                "{bad}"
            );
        }
    }

    #[test]
    fn query_problems_name_the_parameter() {
        assert_eq!(problem_field("limit=1&limit=2"), (422, "limit".into()));
        assert_eq!(problem_field("limt=5"), (422, "limt".into()));
        assert_eq!(problem_field("status=lost"), (422, "status".into()));
        let err = parse_query::<Query>("status=lost").unwrap_err();
        assert!(
            err.errors()[0]
                .message
                .ends_with("must be one of queued, sending, sent, delivered, read, failed"),
            "{err:?}"
        );
        let query = parse_query::<Query>("status=&limit=5").unwrap();
        assert_eq!((query.status, query.limit), (None, Limit(5)));
        let query = parse_query::<Query>("status=sent").unwrap();
        assert_eq!(query.status, Some(MessageStatus::Sent));
    }
}
