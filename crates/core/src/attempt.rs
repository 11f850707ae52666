//! One provider call, in one shape from the provider to the row: the
//! provider builds an [`Outcome`]; the worker wraps it, once, in an
//! [`Attempt`] (which row, which claim, which provider, when, how long); the
//! retry schedule reads the outcome and decides a [`Resolution`]; the store
//! records the attempt and the resolution as they are, flattening them into
//! columns in one place. The row's `last_error` is derived from the two here
//! ([`Attempt::last_error`]), not built a second time anywhere.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{AccountId, JobKind, LastError};

/// What one provider call came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The provider took it. `provider_message_id` is its id (`wamid…`), if it gave one.
    Delivered {
        provider_message_id: Option<String>,
        http_status: Option<u16>,
    },
    /// Try again later; never sooner than `retry_after` if the provider said so.
    Retryable {
        error: ProviderError,
        retry_after: Option<Duration>,
    },
    /// Will never succeed (bad number, recipient not on WhatsApp, …).
    Permanent { error: ProviderError },
}

/// A provider's error: a stable code (the provider's own where it has one,
/// such as Meta's `131026`, else one of ours such as `timeout` or `http_503`)
/// and a human-readable detail.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderError {
    pub code: String,
    pub detail: String,
    pub http_status: Option<u16>,
}

impl ProviderError {
    pub fn new(
        code: impl Into<String>,
        detail: impl Into<String>,
        http_status: Option<u16>,
    ) -> Self {
        Self {
            code: code.into(),
            detail: detail.into(),
            http_status,
        }
    }
}

impl Outcome {
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Outcome::Delivered { http_status, .. } => *http_status,
            Outcome::Retryable { error, .. } | Outcome::Permanent { error } => error.http_status,
        }
    }

    /// The provider's error, unless it took the message.
    pub fn error(&self) -> Option<&ProviderError> {
        match self {
            Outcome::Delivered { .. } => None,
            Outcome::Retryable { error, .. } | Outcome::Permanent { error } => Some(error),
        }
    }

    /// The outcome's name in the attempt history: `delivered`, `retryable`
    /// or `permanent`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Delivered { .. } => "delivered",
            Outcome::Retryable { .. } => "retryable",
            Outcome::Permanent { .. } => "permanent",
        }
    }

    /// The provider's id for what it took.
    pub fn provider_message_id(&self) -> Option<&str> {
        match self {
            Outcome::Delivered {
                provider_message_id,
                ..
            } => provider_message_id.as_deref(),
            _ => None,
        }
    }
}

/// One provider call, for the record.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub kind: JobKind,
    /// The message's or status update's id.
    pub subject_id: Uuid,
    pub account: AccountId,
    /// The claim's attempt number (1 for the first call).
    pub attempt: i32,
    /// The provider's name: `log`, `whatsapp`, `webhook`.
    pub provider: &'static str,
    pub started_at: DateTime<Utc>,
    pub latency: Duration,
    pub outcome: Outcome,
}

/// What an attempt decided for its row.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Delivered: message `sent`, status update `success` (and the user's
    /// status takes the new text).
    Done,
    /// Back to `queued`, unpublished, due `after` from now (Postgres' clock).
    Retry { after: Duration },
    /// `failed` for good; `gave_up` says why a retryable error was not tried
    /// again (the deadline), if that is why.
    Failed { gave_up: Option<String> },
}

impl Attempt {
    /// The row's `last_error` after this attempt: the provider's error, with
    /// why it was given up on, if it was; `None` once delivered.
    pub fn last_error(&self, resolution: &Resolution) -> Option<LastError> {
        let error = self.outcome.error()?;
        let detail = match resolution {
            Resolution::Failed { gave_up: Some(why) } => format!("{} ({why})", error.detail),
            _ => error.detail.clone(),
        };
        Some(LastError {
            code: error.code.clone(),
            detail,
            retryable: matches!(self.outcome, Outcome::Retryable { .. }),
        })
    }

    /// The latency in whole milliseconds, as the history keeps it.
    pub fn latency_ms(&self) -> i32 {
        i32::try_from(self.latency.as_millis()).unwrap_or(i32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(outcome: Outcome) -> Attempt {
        Attempt {
            kind: JobKind::Message,
            subject_id: Uuid::now_v7(),
            account: AccountId(1),
            attempt: 3,
            provider: "whatsapp",
            started_at: Utc::now(),
            latency: Duration::from_millis(1500),
            outcome,
        }
    }

    #[test]
    fn a_delivered_attempt_leaves_no_error_and_names_the_providers_id() {
        let done = attempt(Outcome::Delivered {
            provider_message_id: Some("wamid.1".into()),
            http_status: Some(200),
        });
        assert_eq!(done.last_error(&Resolution::Done), None);
        assert_eq!(done.outcome.provider_message_id(), Some("wamid.1"));
        assert_eq!(done.outcome.as_str(), "delivered");
        assert_eq!(done.latency_ms(), 1500);
    }

    #[test]
    fn a_retryable_error_is_the_rows_last_error_and_says_so() {
        let busy = attempt(Outcome::Retryable {
            error: ProviderError::new("131000", "Something went wrong", Some(500)),
            retry_after: None,
        });
        let error = busy
            .last_error(&Resolution::Retry {
                after: Duration::from_secs(2),
            })
            .unwrap();
        assert_eq!(error.code, "131000");
        assert_eq!(error.detail, "Something went wrong");
        assert!(error.retryable);
        assert_eq!(busy.outcome.http_status(), Some(500));
    }

    #[test]
    fn giving_up_on_a_retryable_error_says_why_and_a_permanent_one_is_not_retryable() {
        let busy = attempt(Outcome::Retryable {
            error: ProviderError::new("131000", "Something went wrong", Some(500)),
            retry_after: None,
        });
        let gave_up = Resolution::Failed {
            gave_up: Some("gave up after 3 attempts".into()),
        };
        let error = busy.last_error(&gave_up).unwrap();
        assert_eq!(
            error.detail,
            "Something went wrong (gave up after 3 attempts)"
        );
        assert!(error.retryable, "it was retryable, before the deadline");

        let bad = attempt(Outcome::Permanent {
            error: ProviderError::new("131026", "Message undeliverable", Some(400)),
        });
        let error = bad
            .last_error(&Resolution::Failed { gave_up: None })
            .unwrap();
        assert!(!error.retryable);
        assert_eq!(bad.outcome.as_str(), "permanent");
    }
}
