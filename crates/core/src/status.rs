//! Delivery state machines. A message only moves forward:
//! `queued → sending → sent → delivered → read`, or to `failed`; a retry waiting
//! for its time goes back to `queued` (with `attempts > 0`).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

use crate::JobKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Queued,
    Sending,
    Sent,
    Delivered,
    Read,
    Failed,
}

impl MessageStatus {
    pub const ALL: [MessageStatus; 6] = [
        MessageStatus::Queued,
        MessageStatus::Sending,
        MessageStatus::Sent,
        MessageStatus::Delivered,
        MessageStatus::Read,
        MessageStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Sending => "sending",
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of the last failed attempt, as clients see it in `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// The provider's code (`"131026"`) or one of ours (`"timeout"`, `"expired"`).
    pub code: String,
    pub detail: String,
    /// Whether kurir will try again (or would have, before giving up).
    pub retryable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for MessageStatus {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MessageStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// A status update's state. `sending` is internal (a worker holds it); the API
/// shows it as `queued`, the contract's three values being `queued`, `success`
/// and `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusUpdateState {
    Queued,
    Sending,
    Success,
    Failed,
}

impl StatusUpdateState {
    /// Every state, in the order a status update moves through them (the
    /// API's document lists their `public` values from here).
    pub const ALL: [StatusUpdateState; 4] = [
        StatusUpdateState::Queued,
        StatusUpdateState::Sending,
        StatusUpdateState::Success,
        StatusUpdateState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatusUpdateState::Queued => "queued",
            StatusUpdateState::Sending => "sending",
            StatusUpdateState::Success => "success",
            StatusUpdateState::Failed => "failed",
        }
    }

    /// The value clients see in `status_update`.
    pub fn public(self) -> &'static str {
        match self {
            StatusUpdateState::Queued | StatusUpdateState::Sending => "queued",
            StatusUpdateState::Success => "success",
            StatusUpdateState::Failed => "failed",
        }
    }
}

impl FromStr for StatusUpdateState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "queued" => Ok(StatusUpdateState::Queued),
            "sending" => Ok(StatusUpdateState::Sending),
            "success" => Ok(StatusUpdateState::Success),
            "failed" => Ok(StatusUpdateState::Failed),
            other => Err(UnknownState(other.to_owned())),
        }
    }
}

/// The state of a message or of a status update: what a client waiting on
/// either (`Prefer: wait`) is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Message(MessageStatus),
    StatusUpdate(StatusUpdateState),
}

impl JobState {
    /// Where every row of `kind` starts.
    pub fn accepted(kind: JobKind) -> Self {
        match kind {
            JobKind::Message => JobState::Message(MessageStatus::Queued),
            JobKind::StatusUpdate => JobState::StatusUpdate(StatusUpdateState::Queued),
        }
    }

    /// A stored state of a row of `kind`.
    pub fn parse(kind: JobKind, state: &str) -> Result<Self, UnknownState> {
        Ok(match kind {
            JobKind::Message => JobState::Message(state.parse()?),
            JobKind::StatusUpdate => JobState::StatusUpdate(state.parse()?),
        })
    }

    /// Whether the request is over: the provider took it (a message `sent`,
    /// or further along), or it failed for good. Nothing a worker does
    /// changes it any more.
    pub fn is_final(self) -> bool {
        match self {
            JobState::Message(status) => {
                !matches!(status, MessageStatus::Queued | MessageStatus::Sending)
            }
            JobState::StatusUpdate(state) => {
                matches!(
                    state,
                    StatusUpdateState::Success | StatusUpdateState::Failed
                )
            }
        }
    }

    /// The value clients see (`message_status`, `status_update`).
    pub fn public(self) -> &'static str {
        match self {
            JobState::Message(status) => status.as_str(),
            JobState::StatusUpdate(state) => state.public(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_text() {
        for status in MessageStatus::ALL {
            assert_eq!(status.as_str().parse::<MessageStatus>(), Ok(status));
        }
        assert!("bogus".parse::<MessageStatus>().is_err());
    }

    #[test]
    fn sending_status_updates_look_queued() {
        assert_eq!(StatusUpdateState::Sending.public(), "queued");
        assert_eq!(StatusUpdateState::Success.public(), "success");
    }

    #[test]
    fn requests_are_over_once_delivered_or_failed() {
        let message = |s| JobState::parse(JobKind::Message, s).unwrap();
        let update = |s| JobState::parse(JobKind::StatusUpdate, s).unwrap();
        for pending in [
            message("queued"),
            message("sending"),
            update("queued"),
            update("sending"),
        ] {
            assert!(!pending.is_final(), "{pending:?}");
        }
        for over in ["sent", "delivered", "read", "failed"] {
            assert!(message(over).is_final(), "{over}");
        }
        assert!(update("success").is_final());
        assert!(update("failed").is_final());
        assert_eq!(update("sending").public(), "queued");
        assert_eq!(message("sending").public(), "sending");
        assert_eq!(JobState::accepted(JobKind::StatusUpdate).public(), "queued");
        assert!(JobState::parse(JobKind::StatusUpdate, "sent").is_err());
    }
}
