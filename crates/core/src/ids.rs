//! Identifiers. Message and status-update ids are UUIDv7 (time-ordered, so
//! "newest first" is an index scan); user ids may be chosen by the client.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::validate::FieldError;

/// An account: the tenant that owns users, messages, status updates and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AccountId(pub i64);

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A user id: `[A-Za-z0-9_-]{1,64}`, chosen by the client or generated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(FieldError::new(field, "must be 1 to 64 characters long"));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(FieldError::new(
                field,
                "may contain only letters, digits, '_' and '-'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// A fresh id for a user created without one: `usr_` and a UUIDv7's 32 hex digits
    /// (time-ordered).
    pub fn generate() -> Self {
        Self(format!("usr_{}", Uuid::now_v7().simple()))
    }

    /// Wraps a value read back from the database, which only ever stores parsed ids.
    pub fn from_trusted(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses a path segment; anything that is not a UUID names no resource.
            pub fn parse(raw: &str) -> Option<Self> {
                Uuid::try_parse(raw).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A message accepted for delivery.
    MessageId
);
uuid_id!(
    /// A status update accepted for delivery.
    StatusUpdateId
);

/// The two kinds of work that travel the same path (accept, relay, deliver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Message,
    StatusUpdate,
}

impl JobKind {
    pub const ALL: [JobKind; 2] = [JobKind::Message, JobKind::StatusUpdate];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Message => "message",
            JobKind::StatusUpdate => "status_update",
        }
    }
}

/// A kind name this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind {0:?} (expected message or status_update)")]
pub struct UnknownKind(pub String);

impl std::str::FromStr for JobKind {
    type Err = UnknownKind;

    /// The inverse of [`JobKind::as_str`].
    fn from_str(text: &str) -> Result<Self, UnknownKind> {
        JobKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| UnknownKind(text.to_owned()))
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_reads_back_what_it_writes_and_nothing_else() {
        for kind in JobKind::ALL {
            assert_eq!(kind.as_str().parse::<JobKind>(), Ok(kind));
        }
        assert!("Message".parse::<JobKind>().is_err());
        assert!("".parse::<JobKind>().is_err());
    }

    #[test]
    fn user_ids_follow_the_contract() {
        assert!(UserId::parse("id", "user123").is_ok());
        assert!(UserId::parse("id", "a-b_C9").is_ok());
        assert!(UserId::parse("id", &"x".repeat(64)).is_ok());
        assert!(UserId::parse("id", &"x".repeat(65)).is_err());
        assert!(UserId::parse("id", "").is_err());
        assert!(UserId::parse("id", "has space").is_err());
        assert!(UserId::parse("id", "ünï").is_err());
        let generated = UserId::generate();
        assert!(UserId::parse("id", generated.as_str()).is_ok());
    }

    #[test]
    fn uuid_ids_parse_only_uuids() {
        assert!(MessageId::parse("not-a-uuid").is_none());
        let id = MessageId::generate();
        assert_eq!(MessageId::parse(&id.to_string()), Some(id));
    }
}
