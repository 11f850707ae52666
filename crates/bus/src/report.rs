//! One log line when a process loses RabbitMQ, one when it has it back.
//! The reconnect loops themselves stay quiet unless an outage lasts.

use tokio::{sync::watch, time::Instant};

/// One connection to RabbitMQ (a publisher, a worker's consumer): up, or
/// down and why.
pub type LinkState = Result<(), String>;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Watches `links` until `shutdown`: the broker counts as up while all are.
pub async fn report_broker(
    mut links: Vec<watch::Receiver<LinkState>>,
    shutdown: CancellationToken,
) {
    let mut was_up = false;
    let mut lost_at: Option<Instant> = None;
    loop {
        if shutdown.is_cancelled() {
            // Links going down because of it are no news.
            return;
        }
        let states: Vec<LinkState> = links
            .iter_mut()
            .map(|link| link.borrow_and_update().clone())
            .collect();
        let up = states.iter().all(Result::is_ok);
        if up != was_up {
            match (up, lost_at.take()) {
                (true, None) => info!("connected to RabbitMQ"),
                (true, Some(at)) => info!(
                    down_ms = at.elapsed().as_millis() as u64,
                    "RabbitMQ is back"
                ),
                (false, _) => {
                    let reason = states
                        .iter()
                        .find_map(|s| s.clone().err())
                        .unwrap_or_default();
                    warn!(%reason, "lost RabbitMQ; reconnecting (accepted rows wait in Postgres)");
                    lost_at = Some(Instant::now());
                }
            }
            was_up = up;
        }
        let changed =
            futures_util::future::select_all(links.iter_mut().map(|link| Box::pin(link.changed())));
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            (changed, _, _) = changed => if changed.is_err() { return },
        }
    }
}
