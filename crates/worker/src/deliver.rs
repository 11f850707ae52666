//! One delivery: claim the row → call the provider → record the outcome and
//! the attempt (grouped with other deliveries' records) → ack. A row claimed
//! past its retry deadline is failed instead, with no provider call and no
//! attempt. [`Deliverer::handle`] decides what becomes of the envelope
//! ([`Settle`]) and the consumer loop does it ([`Deliverer::settle`]). Each
//! step's failure has one answer:
//! - undecodable envelope: parked in `{p}.dead-letters`;
//! - row not claimable: a duplicate envelope; ack and drop;
//! - Postgres unavailable: wait and try again (the envelope stays unacked, the
//!   row stays leased), until the shutdown grace ends (`cut_off`): then the
//!   envelope goes back (before the claim) or the row waits for its lease (after);
//! - the grace ends while the provider has not answered: the delivery gives
//!   its row back itself, so another worker takes it at once;
//! - any other database error: not retried in a loop; the envelope goes back
//!   (before the claim) or the row is retried after its lease (after);
//! - the worker dies anywhere: the broker redelivers the envelope and the
//!   relay re-queues the row when its lease expires.

use std::{future::Future, sync::Arc, time::Duration};

use chrono::Utc;
use kurir_bus::{Delivery, Envelope, Publisher};
use kurir_core::{
    JobKind,
    attempt::{Attempt, Resolution},
    runtime::Reconnect,
};
use kurir_store::{
    Db, StoreError,
    pipeline::{self, Recorded},
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::{
    group::{Claimed, Groups},
    provider::{Outcome, Provider, ProviderError},
    retry::RetryPolicy,
};

/// What becomes of an envelope once its delivery is over; the consumer
/// loop does it ([`Deliverer::settle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Its job is done: delivered and recorded, a duplicate, or its row holds
    /// the truth (and gets a fresh envelope from the relay when due).
    Ack,
    /// Back to the queue for another worker, after `pause`.
    Requeue { pause: Duration },
    /// Left unacked: the broker requeues it when the connection closes.
    Hold,
    /// Into the dead-letter queue, saying why.
    Park { reason: String },
}

/// The pause before handing back an envelope after a failure that is not an
/// outage, so a worker does not spin on it.
const FAILURE_PAUSE: Duration = Duration::from_secs(1);

/// The envelope's fate if the claim did not give a row to deliver.
fn after_claim(claimed: Persisted<Option<Claimed>>, redelivered: bool) -> Result<Claimed, Settle> {
    match claimed {
        Persisted::Done(Some(claimed)) => Ok(claimed),
        Persisted::Done(None) => {
            debug!(
                redelivered,
                "not claimable (done, not due, or held elsewhere); dropping the duplicate"
            );
            Err(Settle::Ack)
        }
        // Stopping while Postgres is away: someone else will take it.
        Persisted::CutOff => Err(Settle::Requeue {
            pause: Duration::ZERO,
        }),
        Persisted::Failed(err) => {
            error!(error = ?err, "cannot claim; handing the envelope back");
            Err(Settle::Requeue {
                pause: FAILURE_PAUSE,
            })
        }
    }
}

/// Everything one delivery needs; shared by all in flight.
pub struct Deliverer {
    pub db: Db,
    pub provider: Arc<dyn Provider>,
    pub publisher: Publisher,
    pub retry: RetryPolicy,
    pub lease: Duration,
    /// How long one provider call may take before the worker gives up on it
    /// (`ProviderArgs::call_limit`).
    pub call_limit: Duration,
    /// Claims rows together with the other deliveries in flight.
    pub(crate) groups: Groups,
}

impl Deliverer {
    /// Handles one envelope to its end. `cut_off` fires when the worker's
    /// shutdown grace is over: whatever has not reached the provider's answer
    /// by then gives its row back.
    pub async fn handle(&self, delivery: &Delivery, cut_off: &CancellationToken) -> Settle {
        let envelope = match &delivery.envelope {
            Ok(envelope) => *envelope,
            Err(err) => {
                warn!(error = %err, bytes = delivery.payload.len(), "undecodable envelope; parking it in the dead-letter queue");
                return Settle::Park {
                    reason: format!("undecodable: {}", err.0),
                };
            }
        };
        // The request's trace goes on (its `trace_id`), so the logs of one
        // message, from its request to its provider call, share one id.
        let span = info_span!(
            "deliver",
            kind = %envelope.kind,
            message_id = tracing::field::Empty,
            status_update_id = tracing::field::Empty,
            account_id = %envelope.account_id,
            attempt = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        match envelope.kind {
            JobKind::Message => span.record("message_id", tracing::field::display(envelope.id)),
            JobKind::StatusUpdate => {
                span.record("status_update_id", tracing::field::display(envelope.id))
            }
        };
        if let Some(trace) = envelope.trace {
            span.record("trace_id", trace.trace_id_hex());
            kurir_core::telemetry::join(&span, trace);
        }
        self.deliver(envelope, delivery.redelivered, cut_off)
            .instrument(span)
            .await
    }

    /// Does what `settle` says with the envelope. Parking that fails hands
    /// the envelope back (after a pause: the broker is in trouble).
    pub async fn settle(&self, delivery: &Delivery, settle: Settle) {
        match settle {
            Settle::Ack => {
                delivery.ack().await;
            }
            Settle::Requeue { pause } => {
                tokio::time::sleep(pause).await;
                delivery.requeue().await;
            }
            Settle::Hold => {}
            Settle::Park { reason } => {
                let parked = self
                    .publisher
                    .park(&delivery.payload, delivery.message_id.as_deref(), &reason)
                    .await;
                match parked {
                    Ok(()) => {
                        delivery.ack().await;
                    }
                    Err(err) => {
                        warn!(error = %err, "could not park the envelope; handing it back");
                        tokio::time::sleep(FAILURE_PAUSE).await;
                        delivery.requeue().await;
                    }
                }
            }
        }
    }

    async fn deliver(
        &self,
        envelope: Envelope,
        redelivered: bool,
        cut_off: &CancellationToken,
    ) -> Settle {
        let claimed = self
            .persist("claim", cut_off, || self.claim(envelope))
            .await;
        let claimed = match after_claim(claimed, redelivered) {
            Ok(claimed) => claimed,
            Err(settle) => return settle,
        };
        let attempt = claimed.attempt();
        tracing::Span::current().record("attempt", attempt);
        let started_at = Utc::now();
        if self.retry.expired(claimed.created_at(), started_at) {
            self.expire(envelope, attempt, cut_off).await;
            return Settle::Ack;
        }
        let started = tokio::time::Instant::now();
        let outcome = tokio::select! {
            outcome = self.call_provider(&claimed) => outcome,
            () = cut_off.cancelled() => {
                self.release(envelope, attempt).await;
                // The broker requeues the envelope when the connection closes.
                return Settle::Hold;
            }
        };
        // The one shape of this call, from here to the row.
        let record = Attempt {
            kind: envelope.kind,
            subject_id: envelope.id,
            account: claimed.account(),
            attempt,
            provider: self.provider.name(),
            started_at,
            latency: started.elapsed(),
            outcome,
        };
        let resolution =
            self.retry
                .resolve(&record.outcome, attempt, claimed.created_at(), Utc::now());
        log_outcome(&record, &resolution);
        count_outcome(
            &record,
            &resolution,
            (resolution == Resolution::Done && envelope.kind == JobKind::Message)
                .then(|| claimed.created_at()),
        );
        let recorded = self
            .persist("record", cut_off, || {
                self.groups.record(resolution.clone(), record.clone())
            })
            .await;
        match recorded {
            Persisted::Done(Recorded::Applied) => {}
            Persisted::Done(Recorded::AlreadyRecorded) => {
                debug!(attempt, "outcome was recorded already (a lost reply)");
            }
            // A receipt that came before our record (WhatsApp's `sent` or
            // `delivered` can beat it), or a lease that expired and was
            // claimed again: either way the row is further along.
            Persisted::Done(Recorded::Superseded) => info!(
                attempt,
                "row moved on while we delivered (a receipt came first, or the lease expired and it was claimed again); outcome recorded as an attempt only"
            ),
            Persisted::CutOff => {
                // Postgres is away and we are stopping: the row stays leased
                // and is delivered again after the lease.
                warn!(
                    attempt,
                    "could not record the outcome before shutdown; it will be retried"
                );
            }
            Persisted::Failed(err) => {
                error!(error = ?err, attempt, "cannot record the outcome; the row will be retried after its lease");
            }
        }
        // The envelope's job is done either way: the row holds the truth, and
        // a row left leased gets a fresh envelope from the relay.
        Settle::Ack
    }

    /// A row claimed past its retry deadline (it waited out an outage) fails
    /// without a provider call, so without an attempt in its history.
    async fn expire(&self, envelope: Envelope, attempt: i32, cut_off: &CancellationToken) {
        let error = self.retry.expiry_error();
        let expired = self
            .persist("expire", cut_off, || {
                self.db.run(async |client| {
                    pipeline::expire(client, envelope.kind, envelope.id, attempt, &error).await
                })
            })
            .await;
        match expired {
            Persisted::Done(true) => warn!(
                attempt,
                code = %error.code,
                detail = %error.detail,
                "failed for good without calling the provider"
            ),
            Persisted::Done(false) => {
                debug!(attempt, "row moved on before it could be expired")
            }
            Persisted::CutOff => warn!(
                attempt,
                "could not fail an expired row before shutdown; it will be expired again after its lease"
            ),
            Persisted::Failed(err) => {
                error!(error = ?err, attempt, "cannot fail an expired row; it will be expired again after its lease")
            }
        }
    }

    /// The shutdown grace ended before the provider answered: give the row
    /// back, so another worker takes it now rather than after the lease. The
    /// envelope stays unacked; the broker requeues it when the connection closes.
    async fn release(&self, envelope: Envelope, attempt: i32) {
        let released = self
            .db
            .run(async |client| {
                pipeline::release_claim(client, envelope.kind, envelope.id, attempt).await
            })
            .await;
        match released {
            Ok(_) => info!(attempt, "released a delivery cut off by shutdown"),
            Err(err) => {
                warn!(attempt, error = %err, "could not release a delivery; its lease will expire")
            }
        }
    }

    async fn claim(&self, envelope: Envelope) -> Result<Option<Claimed>, StoreError> {
        self.groups.claim(envelope.kind, envelope.id).await
    }

    async fn call_provider(&self, claimed: &Claimed) -> Outcome {
        // The provider enforces its own timeout; this one only guards against a hang.
        let limit = self.call_limit;
        let call = async {
            match claimed {
                Claimed::Message(message) => self.provider.send_message(message).await,
                Claimed::StatusUpdate(update) => self.provider.update_status(update).await,
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

    /// Runs a database step, waiting out an unavailable Postgres (only that:
    /// any other error is returned at once rather than retried forever)
    /// until `cut_off`; the step is always tried at least once.
    async fn persist<T, F, Fut>(
        &self,
        what: &str,
        cut_off: &CancellationToken,
        mut step: F,
    ) -> Persisted<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        // Short steps: once Postgres is back, record before a lease runs out.
        let mut reconnect = Reconnect::new(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            match self.db.timed(step()).await {
                Ok(value) => {
                    let failures = reconnect.succeeded();
                    if failures > 0 {
                        info!(step = what, failures, "postgres is back");
                    }
                    return Persisted::Done(value);
                }
                Err(err) if err.is_unavailable() => {
                    let delay = reconnect.failed();
                    if reconnect.failures() == 1 || reconnect.failures().is_multiple_of(20) {
                        warn!(step = what, error = %err, "postgres unavailable; waiting");
                    }
                    tokio::select! {
                        () = cut_off.cancelled() => return Persisted::CutOff,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(err) => return Persisted::Failed(err),
            }
        }
    }
}

enum Persisted<T> {
    Done(T),
    /// The shutdown grace ended while Postgres was away.
    CutOff,
    Failed(StoreError),
}

/// The metrics of one attempt: `kurir_deliveries_total` by outcome and
/// code, the provider's latency, and (for a message the provider took)
/// the time from its acceptance, `accepted_at`.
fn count_outcome(
    record: &Attempt,
    resolution: &Resolution,
    accepted_at: Option<chrono::DateTime<Utc>>,
) {
    let code = record
        .outcome
        .error()
        .map(|error| error.code.clone())
        .unwrap_or_default();
    let result = match resolution {
        Resolution::Done => "sent",
        Resolution::Retry { .. } => "retry",
        Resolution::Failed { .. } => "failed",
    };
    metrics::counter!(
        "kurir_deliveries_total",
        "kind" => record.kind.as_str(),
        "outcome" => result,
        "code" => code
    )
    .increment(1);
    metrics::histogram!(
        "kurir_provider_duration_seconds",
        "provider" => record.provider,
        "kind" => record.kind.as_str()
    )
    .record(record.latency.as_secs_f64());
    if let Some(accepted_at) = accepted_at {
        let waited = (Utc::now() - accepted_at).to_std().unwrap_or_default();
        metrics::histogram!("kurir_accept_to_sent_seconds").record(waited.as_secs_f64());
    }
}

fn log_outcome(record: &Attempt, resolution: &Resolution) {
    let attempt = record.attempt;
    let latency_ms = record.latency.as_millis() as u64;
    let error = record.last_error(resolution);
    let (code, detail) = error
        .as_ref()
        .map(|e| (e.code.as_str(), e.detail.as_str()))
        .unwrap_or_default();
    match resolution {
        Resolution::Done => {
            debug!(
                attempt,
                latency_ms,
                provider_message_id = record.outcome.provider_message_id().unwrap_or(""),
                "delivered"
            );
        }
        Resolution::Retry { after } => {
            warn!(attempt, latency_ms, %code, %detail, retry_in_ms = after.as_millis() as u64, "attempt failed; will retry");
        }
        Resolution::Failed { .. } => {
            let permanent = matches!(record.outcome, Outcome::Permanent { .. });
            warn!(attempt, latency_ms, %code, %detail, permanent, "failed for good");
        }
    }
}

#[cfg(test)]
mod tests {
    use kurir_core::{AccountId, Content, MessageBody, PhoneNumber, UserId};

    use super::*;

    fn claimed() -> Claimed {
        Claimed::Message(pipeline::ClaimedMessage {
            id: kurir_core::MessageId::generate(),
            account: AccountId(7),
            user_id: UserId::from_trusted("u1".into()),
            to: PhoneNumber::from_trusted("+6281234567890".into()),
            content: Content::Text(MessageBody::from_trusted("hi".into())),
            attempt: 2,
            created_at: Utc::now(),
        })
    }

    #[test]
    fn a_claimed_row_is_delivered_with_its_own_account_and_attempt() {
        let claimed = after_claim(Persisted::Done(Some(claimed())), false).unwrap();
        assert_eq!(claimed.account(), AccountId(7));
        assert_eq!(claimed.attempt(), 2);
    }

    #[test]
    fn an_envelope_whose_row_is_not_claimable_is_a_duplicate_and_acked() {
        assert_eq!(
            after_claim(Persisted::Done(None), true).err(),
            Some(Settle::Ack)
        );
    }

    #[test]
    fn an_envelope_goes_back_when_the_claim_cannot_be_made() {
        assert_eq!(
            after_claim(Persisted::CutOff, false).err(),
            Some(Settle::Requeue {
                pause: Duration::ZERO
            }),
            "stopping while Postgres is away: at once, for another worker"
        );
        let failed = Persisted::Failed(StoreError::Corrupt("a bug".into()));
        assert_eq!(
            after_claim(failed, false).err(),
            Some(Settle::Requeue {
                pause: FAILURE_PAUSE
            }),
            "not an outage: after a pause, so nobody spins on it"
        );
    }
}
