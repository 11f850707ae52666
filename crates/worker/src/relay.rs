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

use kurir_bus::{Envelope, PublishError, Publisher};
use kurir_core::JobKind;
use kurir_store::PgPool as Pool;
use kurir_store::{StoreError, pipeline, timed};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub interval: Duration,
    pub batch: u32,
    pub publish_lease: Duration,
    pub republish_after: Duration,
    pub db_timeout: Duration,
}

pub async fn run(
    pool: Pool,
    publisher: Publisher,
    wake: Arc<Notify>,
    config: RelayConfig,
    shutdown: CancellationToken,
) {
    let mut failing = false;
    loop {
        match round(&pool, &publisher, &config).await {
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
async fn round(
    pool: &Pool,
    publisher: &Publisher,
    config: &RelayConfig,
) -> Result<bool, StoreError> {
    let limit = i64::from(config.batch);
    let client = timed(config.db_timeout, async { Ok(pool.get().await?) }).await?;
    for kind in JobKind::ALL {
        let requeued = timed(
            config.db_timeout,
            pipeline::requeue_expired(&client, kind, limit),
        )
        .await?;
        if requeued > 0 {
            warn!(%kind, count = requeued, "requeued rows whose worker lease expired");
        }
    }
    if !publisher.is_connected() {
        // Nothing can be published; the rows wait in Postgres.
        return Ok(false);
    }
    let mut busy = false;
    for kind in JobKind::ALL {
        let rows = timed(
            config.db_timeout,
            pipeline::claim_for_publish(&client, kind, limit, config.publish_lease),
        )
        .await?;
        busy |= send(&client, publisher, config, kind, &rows).await? && rows.len() as i64 == limit;
    }
    // The guard is for copies the broker lost or holds where nobody reads
    // them. While envelopes still wait in the queue, rows published long ago
    // are most likely just behind them: publishing those again would only
    // double the backlog.
    match publisher.deliveries_waiting().await {
        Some(0) => {}
        waiting => {
            debug!(?waiting, "envelopes wait in the queue; the guard waits too");
            return Ok(busy);
        }
    }
    // One batch a round, whatever it finds: the guard never keeps the relay busy.
    for kind in JobKind::ALL {
        let stale = timed(
            config.db_timeout,
            pipeline::claim_stale_published(
                &client,
                kind,
                limit,
                config.publish_lease,
                config.republish_after,
            ),
        )
        .await?;
        if !stale.is_empty() {
            warn!(
                %kind,
                count = stale.len(),
                after = %humantime::format_duration(config.republish_after),
                "publishing again rows still queued long after they were published"
            );
        }
        send(&client, publisher, config, kind, &stale).await?;
    }
    Ok(busy)
}

/// Publishes claimed rows, marks the confirmed ones and releases the rest.
/// False if some could not be published (the broker is in trouble: the
/// round should not come straight back).
async fn send(
    client: &impl kurir_store::GenericClient,
    publisher: &Publisher,
    config: &RelayConfig,
    kind: JobKind,
    rows: &[pipeline::Publishable],
) -> Result<bool, StoreError> {
    if rows.is_empty() {
        return Ok(true);
    }
    let (published, failed) = publish(publisher, rows).await;
    debug!(%kind, published = published.len(), failed = failed.len(), "relay published");
    timed(
        config.db_timeout,
        pipeline::mark_published(client, kind, &published),
    )
    .await?;
    if failed.is_empty() {
        return Ok(true);
    }
    timed(
        config.db_timeout,
        pipeline::release_publish(client, kind, &failed, false),
    )
    .await?;
    Ok(false)
}

/// Publishes `rows`, split into (confirmed, not confirmed).
async fn publish(
    publisher: &Publisher,
    rows: &[pipeline::Publishable],
) -> (Vec<pipeline::Publishable>, Vec<pipeline::Publishable>) {
    let envelopes: Vec<Envelope> = rows
        .iter()
        .map(|row| Envelope::new(row.kind, row.id, row.account))
        .collect();
    let results = publisher.publish_all(&envelopes).await;
    let mut published = Vec::with_capacity(rows.len());
    let mut failed = Vec::new();
    let mut first_error: Option<PublishError> = None;
    for (row, result) in rows.iter().zip(results) {
        match result {
            Ok(()) => published.push(*row),
            Err(err) => {
                first_error.get_or_insert(err);
                failed.push(*row);
            }
        }
    }
    if let Some(err) = first_error {
        warn!(error = %err, count = failed.len(), "publish failed; rows stay in Postgres for the next round");
    }
    (published, failed)
}
