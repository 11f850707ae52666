//! A row on its way to the broker: what the store hands to whoever
//! publishes (the API's dispatcher, the worker's relay), and what the
//! broker's envelope is made from.

use uuid::Uuid;

use crate::{AccountId, JobKind, TraceContext};

/// A row to publish: enough for the envelope and for fencing the mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publishable {
    pub kind: JobKind,
    pub id: Uuid,
    pub account: AccountId,
    pub attempts: i32,
    /// The trace of the request that created the row, for the envelope's
    /// `traceparent` header.
    pub trace: Option<TraceContext>,
}

impl Publishable {
    /// A row just accepted (no attempt yet).
    pub fn accepted(
        kind: JobKind,
        id: Uuid,
        account: AccountId,
        trace: Option<TraceContext>,
    ) -> Self {
        Self {
            kind,
            id,
            account,
            attempts: 0,
            trace,
        }
    }
}
