//! The relay: one loop that is both the outbox sweeper and the retry
//! scheduler. Each round it
//! 1. gives back rows whose worker died mid-delivery (expired leases),
//! 2. claims due, unpublished rows (`FOR UPDATE SKIP LOCKED`, with a publish
//!    lease, so several workers' relays share the work), publishes them with
//!    confirms and marks the confirmed ones; the rest are released for the
//!    next round;
//! 3. the guard: publishes again rows still `queued` long after they were
//!    published (`republish_after`): the broker lost its copy, or a consumer
//!    that nobody reads holds it. The claim drops whichever copy comes second.
//!
//! It runs when woken by a NOTIFY, and at least every `relay_interval`.

use std::{sync::Arc, time::Duration};

use kurir_bus::{Envelope, Published, Publisher};
use kurir_core::JobKind;
use kurir_store::{Db, StoreError, pipeline};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub interval: Duration,
    pub batch: u32,
    pub publish_lease: Duration,
    pub republish_after: Duration,
}

pub async fn run(
    db: Db,
    publisher: Publisher,
    wake: Arc<Notify>,
    config: RelayConfig,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        match round(&db, &publisher, &config).await {
            Ok(busy) => {
                if failing {
                    info!("relay recovered");
                    failing = false;
                }
                if busy && !shutdown.is_cancelled() {
                    // A full batch: there is probably more right now.
                    continue;
                }
            }
            Err(err) => {
                if !failing {
                    warn!(error = %err, "relay round failed; retrying");
                    failing = true;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = wake.notified() => {}
            () = tokio::time::sleep(config.interval) => {}
        }
    }
}

/// One round; true if some batch was full (come back at once).
async fn round(db: &Db, publisher: &Publisher, config: &RelayConfig) -> Result<bool, StoreError> {
    let limit = i64::from(config.batch);
    let client = db.client().await?;
    for kind in JobKind::ALL {
        let requeued = db
            .timed(pipeline::requeue_expired(&client, kind, limit))
            .await?;
        if requeued > 0 {
            warn!(%kind, count = requeued, "requeued rows whose worker lease expired");
            metrics::counter!("kurir_leases_recovered_total", "kind" => kind.as_str())
                .increment(requeued);
        }
    }
    if !publisher.is_connected() {
        // Nothing can be published; the rows wait in Postgres.
        return Ok(false);
    }
    let mut busy = false;
    for kind in JobKind::ALL {
        let rows = db
            .timed(pipeline::claim_for_publish(
                &client,
                kind,
                limit,
                config.publish_lease,
            ))
            .await?;
        let all_published = send(db, &client, publisher, kind, &rows).await?;
        busy |= keeps_busy(rows.len(), limit, all_published);
    }
    let waiting = publisher.deliveries_waiting().await;
    if !guard_may_run(waiting) {
        debug!(?waiting, "envelopes wait in the queue; the guard waits too");
        return Ok(busy);
    }
    // One batch a round, whatever it finds: the guard never keeps the relay busy.
    for kind in JobKind::ALL {
        let stale = db
            .timed(pipeline::claim_stale_published(
                &client,
                kind,
                limit,
                config.publish_lease,
                config.republish_after,
            ))
            .await?;
        if !stale.is_empty() {
            metrics::counter!("kurir_republished_total", "kind" => kind.as_str())
                .increment(stale.len() as u64);
            warn!(
                %kind,
                count = stale.len(),
                after = %humantime::format_duration(config.republish_after),
                "publishing again rows still queued long after they were published"
            );
        }
        send(db, &client, publisher, kind, &stale).await?;
    }
    Ok(busy)
}

/// A kind keeps the relay busy (its next round starts at once) when its
/// batch was full, so more is probably waiting, and all of it was published
/// (a broker in trouble should not be asked again straight away).
fn keeps_busy(claimed: usize, limit: i64, all_published: bool) -> bool {
    all_published && i64::try_from(claimed).is_ok_and(|claimed| claimed == limit)
}

/// The guard is for copies the broker lost or holds where nobody reads
/// them. While envelopes still wait in the queue (or the broker cannot say),
/// rows published long ago are most likely just behind them: publishing
/// those again would only double the backlog.
fn guard_may_run(deliveries_waiting: Option<u32>) -> bool {
    deliveries_waiting == Some(0)
}

/// Publishes claimed rows, marks the confirmed ones and releases the rest.
/// False if some could not be published (the broker is in trouble: the
/// round should not come straight back).
async fn send(
    db: &Db,
    client: &impl kurir_store::GenericClient,
    publisher: &Publisher,
    kind: JobKind,
    rows: &[pipeline::Publishable],
) -> Result<bool, StoreError> {
    if rows.is_empty() {
        return Ok(true);
    }
    let Published {
        confirmed: published,
        failed,
        first_error,
    } = publisher
        .publish_each(rows, |row| Envelope::from(row))
        .await;
    if let Some(err) = first_error {
        warn!(error = %err, count = failed.len(), "publish failed; rows stay in Postgres for the next round");
    }
    debug!(%kind, published = published.len(), failed = failed.len(), "relay published");
    metrics::counter!("kurir_relay_published_total", "kind" => kind.as_str())
        .increment(published.len() as u64);
    db.timed(pipeline::mark_published(client, kind, &published))
        .await?;
    if failed.is_empty() {
        return Ok(true);
    }
    db.timed(pipeline::release_publish(client, kind, &failed, false))
        .await?;
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_batch_published_whole_brings_the_relay_straight_back() {
        assert!(keeps_busy(500, 500, true));
        assert!(
            !keeps_busy(499, 500, true),
            "a short batch: nothing more waits"
        );
        assert!(
            !keeps_busy(500, 500, false),
            "the broker is in trouble: wait"
        );
        assert!(!keeps_busy(0, 500, true));
    }

    #[test]
    fn the_guard_waits_while_envelopes_wait_or_the_broker_cannot_say() {
        assert!(guard_may_run(Some(0)));
        assert!(!guard_may_run(Some(3)));
        assert!(!guard_may_run(None));
    }
}
