//! Housekeeping that runs in every worker: expired idempotency keys are
//! deleted in batches (oldest first), so the table holds about one day of
//! keys whatever the traffic. Several workers doing it at once share the
//! work harmlessly: a key is deleted once.

use std::time::Duration;

use kurir_store::{Db, idempotency};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Keys deleted by one statement: short transactions, few locks at a time.
const BATCH: i64 = 1000;
/// How often the cleanup looks for expired keys.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// Runs until `shutdown`: one cleanup at start, then every `interval`.
pub async fn run(db: Db, interval: Duration, shutdown: CancellationToken) {
    loop {
        match delete_expired_keys(&db, &shutdown).await {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, "deleted expired idempotency keys"),
            Err(err) => debug!(error = %err, "idempotency key cleanup failed; trying again later"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Deletes every expired key, a batch at a time; how many.
pub async fn delete_expired_keys(
    db: &Db,
    shutdown: &CancellationToken,
) -> Result<u64, kurir_store::StoreError> {
    let mut total = 0;
    loop {
        let deleted = db
            .run(async |client| idempotency::delete_expired(client, BATCH).await)
            .await?;
        total += deleted;
        if deleted < BATCH as u64 || shutdown.is_cancelled() {
            return Ok(total);
        }
    }
}
