//! Publishing right after accepting. A handler commits the row (holding its
//! publish lease) and hands it here; one task publishes what has gathered as a
//! pipelined batch, then marks the confirmed rows published in one UPDATE per
//! kind. Rows that fail are released for the relay at once; if the broker is
//! down they are not even tried, and the relay takes them when their lease
//! ends. Either way the row in Postgres is the promise: nothing here can lose
//! a message.

use std::{future::Future, time::Duration};

use kurir_bus::{Envelope, Publisher};
use kurir_core::{JobKind, runtime::Tasks};
use kurir_store::{
    PgPool, StoreError,
    pipeline::{self, Publishable},
    timed,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::error::ApiError;

/// Most rows published in one batch.
const BATCH: usize = 512;
/// Rows waiting to be published; past this the relay takes over.
const BACKLOG: usize = 8192;

#[derive(Debug, Clone)]
pub struct Dispatcher {
    tx: mpsc::Sender<Publishable>,
}

impl Dispatcher {
    pub fn start(
        pool: PgPool,
        publisher: Publisher,
        db_timeout: Duration,
        tasks: &Tasks,
        shutdown: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(BACKLOG);
        tasks.spawn(run(rx, pool, publisher, db_timeout, shutdown));
        Self { tx }
    }

    /// Queues an accepted row for publishing. Never waits and never fails
    /// the request: if the dispatcher is behind (or gone), the relay
    /// publishes the row when its publish lease ends.
    pub fn submit(&self, row: Publishable) {
        if self.tx.try_send(row).is_err() {
            debug!(id = %row.id, "dispatcher busy; leaving the row to the relay");
        }
    }
}

/// Runs an accept (commit the row, then hand it to the dispatcher) on its own
/// task of the process's `tasks`: a client that hangs up drops its request's
/// future, and must not split the commit from the hand-over (the row would
/// then wait out its publish lease for the relay).
pub async fn detached<T: Send + 'static>(
    tasks: &Tasks,
    accept: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tasks.spawn(accept).await.unwrap_or_else(|err| {
        tracing::error!(error = %err, "an accept task failed");
        Err(ApiError::internal())
    })
}

async fn run(
    mut rx: mpsc::Receiver<Publishable>,
    pool: PgPool,
    publisher: Publisher,
    db_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            received = rx.recv_many(&mut batch, BATCH) => received,
        };
        if received == 0 {
            return;
        }
        if !publisher.is_connected() {
            debug!(
                rows = batch.len(),
                "broker unavailable; leaving rows to the relay"
            );
            continue;
        }
        let envelopes: Vec<Envelope> = batch
            .iter()
            .map(|row| Envelope::new(row.kind, row.id, row.account))
            .collect();
        let results = publisher.publish_all(&envelopes).await;
        let mut confirmed: [Vec<Publishable>; 2] = Default::default();
        let mut failed: [Vec<Publishable>; 2] = Default::default();
        for (row, result) in batch.iter().zip(results) {
            let slot = match row.kind {
                JobKind::Message => 0,
                JobKind::StatusUpdate => 1,
            };
            match result {
                Ok(()) => confirmed[slot].push(*row),
                Err(err) => {
                    debug!(error = %err, id = %row.id, "publish failed; releasing to the relay");
                    failed[slot].push(*row);
                }
            }
        }
        if let Err(err) = settle(&pool, db_timeout, &confirmed, &failed).await {
            // Unmarked rows are published again by the relay when their lease
            // ends; the worker drops the duplicate.
            warn!(error = %err, "could not mark published rows");
        }
    }
}

async fn settle(
    pool: &PgPool,
    db_timeout: Duration,
    confirmed: &[Vec<Publishable>; 2],
    failed: &[Vec<Publishable>; 2],
) -> Result<(), StoreError> {
    timed(db_timeout, async {
        let client = pool.get().await?;
        for (kind, rows) in JobKind::ALL.into_iter().zip(confirmed) {
            pipeline::mark_published(&client, kind, rows).await?;
        }
        for (kind, rows) in JobKind::ALL.into_iter().zip(failed) {
            pipeline::release_publish(&client, kind, rows, true).await?;
        }
        Ok(())
    })
    .await
}
