//! What travels on the broker: which row to deliver, nothing else.

use kurir_core::{AccountId, JobKind, Publishable, TraceContext};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A pointer to one row to deliver. Small on purpose: the body stays in
/// Postgres, so a duplicate or stale envelope is harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version; a worker refuses versions it does not know.
    pub v: u8,
    pub kind: JobKind,
    pub id: Uuid,
    pub account_id: AccountId,
    /// The trace of the request behind the row: it travels in the AMQP
    /// `traceparent` header, not in the body.
    #[serde(skip)]
    pub trace: Option<TraceContext>,
}

impl From<&Publishable> for Envelope {
    /// The envelope of a row to publish, carrying its request's trace.
    fn from(row: &Publishable) -> Self {
        Envelope::new(row.kind, row.id, row.account).traced(row.trace)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable envelope: {0}")]
pub struct DecodeError(pub String);

impl Envelope {
    pub const VERSION: u8 = 1;

    pub fn new(kind: JobKind, id: Uuid, account_id: AccountId) -> Self {
        Self {
            v: Self::VERSION,
            kind,
            id,
            account_id,
            trace: None,
        }
    }

    /// The same envelope, carrying `trace`.
    pub fn traced(self, trace: Option<TraceContext>) -> Self {
        Self { trace, ..self }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising this plain struct cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let envelope: Envelope =
            serde_json::from_slice(bytes).map_err(|err| DecodeError(err.to_string()))?;
        if envelope.v != Self::VERSION {
            return Err(DecodeError(format!("unknown version {}", envelope.v)));
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let envelope = Envelope::new(JobKind::StatusUpdate, Uuid::now_v7(), AccountId(7));
        assert_eq!(Envelope::decode(&envelope.encode()).unwrap(), envelope);
        let text = String::from_utf8(envelope.encode()).unwrap();
        assert!(text.contains("\"kind\":\"status_update\""), "{text}");
    }

    #[test]
    fn garbage_and_unknown_versions_are_refused() {
        assert!(Envelope::decode(b"not json").is_err());
        assert!(Envelope::decode(br#"{"v":1,"kind":"message"}"#).is_err());
        let future = format!(
            r#"{{"v":2,"kind":"message","id":"{}","account_id":1}}"#,
            Uuid::now_v7()
        );
        assert!(Envelope::decode(future.as_bytes()).is_err());
    }
}
