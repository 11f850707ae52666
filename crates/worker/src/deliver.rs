//! One delivery: claim the row → call the provider → record the outcome and
//! the attempt in one transaction → ack. Each step's failure has one answer:
//! - undecodable envelope: parked in `{p}.dead`;
//! - row not claimable: a duplicate envelope; ack and drop;
//! - Postgres unavailable: wait and try again (the envelope stays unacked, the
//!   row stays leased), or on shutdown hand the envelope back;
//! - the worker dies anywhere: the broker redelivers the envelope and the
//!   relay re-queues the row when its lease expires.

use std::{future::Future, sync::Arc, time::Duration};

use chrono::Utc;
use kurir_bus::{Delivery, Envelope, Publisher};
use kurir_core::{JobKind, LastError, MessageId, StatusUpdateId};
use kurir_store::PgPool as Pool;
use kurir_store::{
    StoreError,
    pipeline::{self, Attempt, AttemptOutcome, Resolution},
    timed,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    provider::{OutboundMessage, OutboundStatus, Outcome, Provider, ProviderError},
    retry::RetryPolicy,
};

/// Everything one delivery needs; shared by all in flight.
pub struct Deliverer {
    pub pool: Pool,
    pub provider: Arc<dyn Provider>,
    pub publisher: Publisher,
    pub retry: RetryPolicy,
    pub lease: Duration,
    pub db_timeout: Duration,
    pub provider_timeout: Duration,
    pub shutdown: CancellationToken,
}

/// A claimed row, ready for the provider.
enum Claimed {
    Message(pipeline::ClaimedMessage),
    StatusUpdate(pipeline::ClaimedStatusUpdate),
}

impl Claimed {
    fn attempt(&self) -> i32 {
        match self {
            Claimed::Message(m) => m.attempt,
            Claimed::StatusUpdate(s) => s.attempt,
        }
    }

    fn created_at(&self) -> chrono::DateTime<Utc> {
        match self {
            Claimed::Message(m) => m.created_at,
            Claimed::StatusUpdate(s) => s.created_at,
        }
    }
}

impl Deliverer {
    pub async fn handle(&self, delivery: Delivery) {
        let envelope = match &delivery.envelope {
            Ok(envelope) => *envelope,
            Err(err) => return self.park(&delivery, err).await,
        };
        let span = info_span!("deliver", kind = %envelope.kind, id = %envelope.id, account_id = %envelope.account_id);
        self.deliver(&delivery, envelope).instrument(span).await;
    }

    async fn park(&self, delivery: &Delivery, err: &kurir_bus::DecodeError) {
        warn!(error = %err, bytes = delivery.payload.len(), "undecodable envelope; parking it in the dead-letter queue");
        match self.publisher.park_undecodable(&delivery.payload).await {
            Ok(()) => {
                delivery.ack().await;
            }
            Err(err) => {
                warn!(error = %err, "could not park the envelope; handing it back");
                delivery.requeue().await;
            }
        }
    }

    async fn deliver(&self, delivery: &Delivery, envelope: Envelope) {
        let Some(claimed) = self.persist("claim", || self.claim(envelope)).await else {
            // Shutting down before the claim: someone else will take it.
            delivery.requeue().await;
            return;
        };
        let Some(claimed) = claimed else {
            debug!(
                redelivered = delivery.redelivered,
                "not claimable (done, not due, or held elsewhere); dropping the duplicate"
            );
            delivery.ack().await;
            return;
        };
        let attempt = claimed.attempt();
        let started_at = Utc::now();
        let started = tokio::time::Instant::now();
        let outcome = if self.retry.expired(claimed.created_at(), started_at) {
            Outcome::Permanent {
                error: ProviderError::new(
                    "expired",
                    "not delivered before the retry deadline",
                    None,
                ),
            }
        } else {
            self.call_provider(&claimed).await
        };
        let latency = started.elapsed();
        let resolution = self
            .retry
            .resolve(&outcome, attempt, claimed.created_at(), Utc::now());
        log_outcome(&outcome, &resolution, attempt, latency);
        let record = Attempt {
            kind: envelope.kind,
            subject_id: envelope.id,
            account: envelope.account_id,
            attempt,
            provider: self.provider.name().to_owned(),
            outcome: match &outcome {
                Outcome::Delivered { .. } => AttemptOutcome::Delivered,
                Outcome::Retryable { .. } => AttemptOutcome::Retryable,
                Outcome::Permanent { .. } => AttemptOutcome::Permanent,
            },
            http_status: outcome.http_status().map(i32::from),
            error_code: error_of(&outcome).map(|e| e.code.clone()),
            error_detail: error_of(&outcome).map(|e| e.detail.clone()),
            latency_ms: i32::try_from(latency.as_millis()).unwrap_or(i32::MAX),
            started_at,
        };
        let recorded = self
            .persist("record", || self.record(&resolution, &record))
            .await;
        match recorded {
            Some(true) => {}
            Some(false) => warn!(
                attempt,
                "row moved on while we delivered (lease expired?); outcome recorded as an attempt only"
            ),
            None => {
                // Shutting down with Postgres away: leave the envelope unacked;
                // the lease expires and the row is delivered again.
                warn!(
                    attempt,
                    "could not record the outcome before shutdown; it will be retried"
                );
                return;
            }
        }
        delivery.ack().await;
    }

    async fn claim(&self, envelope: Envelope) -> Result<Option<Claimed>, StoreError> {
        let client = self.pool.get().await?;
        Ok(match envelope.kind {
            JobKind::Message => pipeline::claim_message(&client, envelope.id, self.lease)
                .await?
                .map(Claimed::Message),
            JobKind::StatusUpdate => {
                pipeline::claim_status_update(&client, envelope.id, self.lease)
                    .await?
                    .map(Claimed::StatusUpdate)
            }
        })
    }

    async fn record(&self, resolution: &Resolution, record: &Attempt) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        pipeline::record(&client, resolution, record).await
    }

    async fn call_provider(&self, claimed: &Claimed) -> Outcome {
        // The provider enforces its own timeout; this one only guards against a hang.
        let limit = self.provider_timeout + Duration::from_secs(1);
        let call = async {
            match claimed {
                Claimed::Message(m) => {
                    let message = OutboundMessage {
                        message_id: MessageId(m.id),
                        user_id: m.user_id.clone(),
                        to: m.to.clone(),
                        body: m.body.clone(),
                        attempt: m.attempt,
                    };
                    self.provider.send_message(&message).await
                }
                Claimed::StatusUpdate(s) => {
                    let update = OutboundStatus {
                        status_update_id: StatusUpdateId(s.id),
                        user_id: s.user_id.clone(),
                        phone_number: s.phone_number.clone(),
                        status: s.status.clone(),
                        attempt: s.attempt,
                    };
                    self.provider.update_status(&update).await
                }
            }
        };
        match tokio::time::timeout(limit, call).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Retryable {
                error: ProviderError::new(
                    "timeout",
                    format!("no answer within {}ms", limit.as_millis()),
                    None,
                ),
                retry_after: None,
            },
        }
    }

    /// Runs a database step until it succeeds, waiting out an unavailable
    /// Postgres. `None` if shutdown came first.
    async fn persist<T, F, Fut>(&self, what: &str, mut step: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut delay = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            match timed(self.db_timeout, step()).await {
                Ok(value) => {
                    if failures > 0 {
                        info!(step = what, failures, "postgres is back");
                    }
                    return Some(value);
                }
                Err(err) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(20) {
                        if err.is_unavailable() {
                            warn!(step = what, error = %err, "postgres unavailable; waiting");
                        } else {
                            error!(step = what, error = ?err, "database step failed; retrying");
                        }
                    }
                }
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

fn error_of(outcome: &Outcome) -> Option<&ProviderError> {
    match outcome {
        Outcome::Delivered { .. } => None,
        Outcome::Retryable { error, .. } | Outcome::Permanent { error } => Some(error),
    }
}

fn log_outcome(outcome: &Outcome, resolution: &Resolution, attempt: i32, latency: Duration) {
    let latency_ms = latency.as_millis() as u64;
    match resolution {
        Resolution::Done {
            provider_message_id,
        } => {
            debug!(
                attempt,
                latency_ms,
                provider_message_id = provider_message_id.as_deref().unwrap_or(""),
                "delivered"
            );
        }
        Resolution::Retry { after, error } => {
            warn!(attempt, latency_ms, code = %error.code, detail = %error.detail, retry_in_ms = after.as_millis() as u64, "attempt failed; will retry");
        }
        Resolution::Failed { error } => {
            let LastError { code, detail, .. } = error;
            let permanent = matches!(outcome, Outcome::Permanent { .. });
            warn!(attempt, latency_ms, %code, %detail, permanent, "failed for good");
        }
    }
}
