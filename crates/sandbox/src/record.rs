//! The log of every request the sandbox answered on its WhatsApp-shaped routes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Which WhatsApp endpoint a request was aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// `POST [/{version}]/{phone_number_id}/messages`.
    Message,
    /// `POST [/{version}]/{phone_number_id}/whatsapp_business_profile`.
    Profile,
    /// Anything else (answered 404).
    Unknown,
}

/// One request as received and answered. Fields come from the body on a
/// best-effort basis, so a rejected request still shows what it carried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// Arrival number: starts at 1, increases, and is not reset by a clear.
    pub seq: u64,
    pub received_at: DateTime<Utc>,
    pub method: String,
    pub path: String,
    pub kind: RequestKind,
    /// From the path; empty for unknown routes.
    pub phone_number_id: String,
    /// `to` exactly as sent (a leading `+` kept).
    pub to: Option<String>,
    /// `text.body`.
    pub body: Option<String>,
    /// The body's `type` (`"text"`, `"template"`, …); `"text"` for a message
    /// body without one, since that is what Meta takes it for. `None` when
    /// the body is not a JSON object or `type` is not a string. Defaulted when
    /// deserializing so records from older sandboxes still read.
    #[serde(default)]
    pub message_type: Option<String>,
    /// The `template` object exactly as received (even a malformed one), so
    /// tests can see which template and parameters a request carried.
    #[serde(default)]
    pub template: Option<serde_json::Value>,
    /// `about` of a profile update.
    pub about: Option<String>,
    pub biz_opaque_callback_data: Option<String>,
    /// The whole `Authorization` header value.
    pub authorization: Option<String>,
    pub response_status: u16,
    /// The wamid handed out, for accepted messages.
    pub wamid: Option<String>,
    /// The Meta error code answered, for failures.
    pub error_code: Option<u32>,
}

/// Thread-safe, arrival-ordered store of [`RecordedRequest`]s.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    last_seq: AtomicU64,
    records: Mutex<Vec<RecordedRequest>>,
}

impl Recorder {
    /// Takes the next arrival number.
    pub(crate) fn next_seq(&self) -> u64 {
        self.last_seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Stores a finished request, keeping arrival (seq) order even when
    /// requests finish out of order.
    pub(crate) fn push(&self, record: RecordedRequest) {
        let mut records = lock(&self.records);
        let pos = records.partition_point(|r| r.seq < record.seq);
        records.insert(pos, record);
    }

    pub(crate) fn snapshot(&self) -> Vec<RecordedRequest> {
        lock(&self.records).clone()
    }

    pub(crate) fn clear(&self) {
        lock(&self.records).clear();
    }
}

/// Locks a mutex, carrying on past poisoning (the data stays consistent:
/// every critical section here is a single push/clear/copy).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64) -> RecordedRequest {
        RecordedRequest {
            seq,
            received_at: Utc::now(),
            method: "POST".into(),
            path: "/1/messages".into(),
            kind: RequestKind::Message,
            phone_number_id: "1".into(),
            to: None,
            body: None,
            message_type: None,
            template: None,
            about: None,
            biz_opaque_callback_data: None,
            authorization: None,
            response_status: 200,
            wamid: None,
            error_code: None,
        }
    }

    #[test]
    fn keeps_arrival_order_and_clears() {
        let r = Recorder::default();
        let (a, b, c) = (r.next_seq(), r.next_seq(), r.next_seq());
        r.push(rec(c));
        r.push(rec(a));
        r.push(rec(b));
        let seqs: Vec<u64> = r.snapshot().iter().map(|x| x.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        r.clear();
        assert!(r.snapshot().is_empty());
        assert_eq!(r.next_seq(), 4);
    }

    #[test]
    fn kind_serializes_lowercase() {
        let json = serde_json::to_value(rec(1)).expect("json");
        assert_eq!(json["kind"], "message");
        assert!(json["received_at"].as_str().is_some());
        assert!(json["wamid"].is_null());
    }

    #[test]
    fn type_and_template_serialize_and_may_be_absent() {
        let template = serde_json::json!({"name":"hello_world","language":{"code":"en_US"}});
        let r = RecordedRequest {
            message_type: Some("template".into()),
            template: Some(template.clone()),
            ..rec(1)
        };
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["message_type"], "template");
        assert_eq!(json["template"], template);
        let back: RecordedRequest = serde_json::from_value(json.clone()).expect("back");
        assert_eq!(back, r);

        // A record without the new fields (an older sandbox) still reads.
        let mut old = json;
        if let Some(o) = old.as_object_mut() {
            o.remove("message_type");
            o.remove("template");
        }
        let back: RecordedRequest = serde_json::from_value(old).expect("old shape");
        assert_eq!((back.message_type, back.template), (None, None));
    }
}
