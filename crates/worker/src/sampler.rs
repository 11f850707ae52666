//! The gauges no event moves: what waits in Postgres (`kurir_backlog`), in
//! RabbitMQ (`kurir_queue_messages`), and the pool's use. Sampled every
//! [`INTERVAL`] by each worker (so each reports the same backlog: alert on
//! the max across workers, not the sum).

use std::time::Duration;

use kurir_bus::Publisher;
use kurir_store::{Db, pipeline};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How often the gauges are sampled.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// Samples until `shutdown`.
pub(crate) async fn run(db: Db, publisher: Publisher, shutdown: CancellationToken) {
    loop {
        sample(&db, &publisher).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

/// One sample of every gauge; what cannot be told now keeps its last value.
pub(crate) async fn sample(db: &Db, publisher: &Publisher) {
    db.report_pool("worker");
    match db.run(async |client| pipeline::backlog(client).await).await {
        Ok(counts) => {
            for (kind, waiting, count) in counts {
                metrics::gauge!("kurir_backlog", "kind" => kind.as_str(), "waiting" => waiting)
                    .set(count as f64);
            }
        }
        Err(err) => debug!(error = %err, "backlog not sampled"),
    }
    for (queue, depth) in [
        ("deliveries", publisher.deliveries_waiting().await),
        ("dead", publisher.dead_waiting().await),
    ] {
        if let Some(depth) = depth {
            metrics::gauge!("kurir_queue_messages", "queue" => queue).set(f64::from(depth));
        }
    }
}
