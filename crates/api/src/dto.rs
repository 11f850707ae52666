//! The JSON the API answers with. Seed fields keep the seed document's names
//! (`id`, `name`, `phone_number`, `profile_image`, `status`, `message_status`,
//! `status_update`). Timestamps are RFC 3339 UTC with milliseconds.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, SecondsFormat, Utc};
use kurir_core::LastError;
use kurir_store::{messages::Message, status_updates::StatusUpdate, users::User};
use serde::{Serialize, Serializer};

use crate::error::ApiError;

fn ts<S: Serializer>(value: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&value.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn ts_opt<S: Serializer>(value: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => ts(value, serializer),
        None => serializer.serialize_none(),
    }
}

#[derive(Serialize)]
pub struct UserBody {
    pub id: String,
    pub name: String,
    pub phone_number: String,
    pub profile_image: Option<String>,
    pub status: String,
    #[serde(serialize_with = "ts")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "ts")]
    pub updated_at: DateTime<Utc>,
}

impl From<User> for UserBody {
    fn from(user: User) -> Self {
        Self {
            id: user.id.to_string(),
            name: user.name.into_inner(),
            phone_number: user.phone_number.into_inner(),
            profile_image: user.profile_image.map(|image| image.into_inner()),
            status: user.status.into_inner(),
            created_at: user.created_at,
            updated_at: user.updated_at,
        }
    }
}

#[derive(Serialize)]
pub struct UserList {
    pub users: Vec<UserBody>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize)]
pub struct MessageBody {
    pub message_id: String,
    pub user_id: String,
    pub message: String,
    pub message_status: &'static str,
    pub attempts: i32,
    #[serde(serialize_with = "ts_opt")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<LastError>,
    pub provider_message_id: Option<String>,
    #[serde(serialize_with = "ts")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "ts")]
    pub updated_at: DateTime<Utc>,
    #[serde(serialize_with = "ts_opt")]
    pub sent_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "ts_opt")]
    pub delivered_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "ts_opt")]
    pub read_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "ts_opt")]
    pub failed_at: Option<DateTime<Utc>>,
}

impl From<Message> for MessageBody {
    fn from(message: Message) -> Self {
        Self {
            message_id: message.id.to_string(),
            user_id: message.user_id.to_string(),
            message: message.body.into_inner(),
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

#[derive(Serialize)]
pub struct MessageList {
    pub messages: Vec<MessageBody>,
    pub next_cursor: Option<String>,
}

/// The seed's answer to a send: `{"message_id","message_status"}`.
#[derive(Serialize)]
pub struct Accepted {
    pub message_id: String,
    pub message_status: &'static str,
}

#[derive(Serialize)]
pub struct StatusUpdateBody {
    pub status_update_id: String,
    pub user_id: String,
    pub status: String,
    pub status_update: &'static str,
    pub attempts: i32,
    #[serde(serialize_with = "ts_opt")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<LastError>,
    #[serde(serialize_with = "ts")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "ts")]
    pub updated_at: DateTime<Utc>,
}

impl From<StatusUpdate> for StatusUpdateBody {
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

/// The seed's answer to a status update: `{"status_update_id","status_update"}`.
#[derive(Serialize)]
pub struct StatusAccepted {
    pub status_update_id: String,
    pub status_update: &'static str,
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

/// `limit`: 1 to 1000, default 100.
pub fn parse_limit(raw: Option<&str>) -> Result<i64, ApiError> {
    match raw {
        None => Ok(100),
        Some(raw) => match raw.parse::<i64>() {
            Ok(limit) if (1..=1000).contains(&limit) => Ok(limit),
            _ => Err(ApiError::field(
                "limit",
                "must be a whole number from 1 to 1000",
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_are_tagged() {
        let cursor = encode_cursor("u", "42");
        assert_eq!(decode_cursor("u", &cursor).unwrap(), "42");
        assert!(decode_cursor("m", &cursor).is_err());
        assert!(decode_cursor("u", "!!").is_err());
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(parse_limit(None).unwrap(), 100);
        assert_eq!(parse_limit(Some("1000")).unwrap(), 1000);
        for bad in ["0", "1001", "-1", "ten", ""] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
