//! kurir's worker: the relay (outbox sweeper, retry scheduler and the guard
//! for published rows), and the consume → claim → deliver → record → ack
//! loop, with its providers.
//!
//! Retries wait in Postgres (`due_at`), never in a sleeping task: they survive
//! restarts, show in polling, and cost no worker slot. Run as many workers as
//! you like; they share the work through the queue and `SKIP LOCKED`.
//!
//! Every task of a worker is owned by its [`Tasks`]; the consuming loop owns
//! its RabbitMQ subscription and replaces it whole when it is lost.

pub mod config;
pub mod deliver;
mod group;
pub mod health;
pub mod housekeeping;
pub mod provider;
pub mod relay;
pub mod retry;
mod sampler;

use std::{sync::Arc, time::Duration};

use kurir_bus::{BusError, LinkState, Publisher, QueueState, Subscription, Topology};
use kurir_core::runtime::Tasks;
use kurir_store::Db;
use kurir_store::{listen, pipeline};
use tokio::{sync::Semaphore, sync::watch, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, error, info, warn};

use crate::{deliver::Deliverer, provider::Provider, relay::RelayConfig, retry::RetryPolicy};

pub use config::Config;

/// A worker's settings, checked, and the provider they make: what a worker
/// needs to start, made before anything listens or connects.
pub struct Checked {
    config: Config,
    provider: Arc<dyn Provider>,
}

impl std::fmt::Debug for Checked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checked")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Checked {
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl Config {
    /// Checks what no setting can alone (the lease against the timeouts of
    /// one delivery) and builds the provider (a `whatsapp` one without its
    /// token is refused here): every mistake a worker can find in its
    /// settings, found before it listens or connects.
    pub fn check(self) -> Result<Checked, WorkerError> {
        self.worker
            .check(&self.provider, &self.database)
            .map_err(WorkerError::Settings)?;
        let provider = provider::from_args(&self.provider).map_err(WorkerError::Settings)?;
        Ok(Checked {
            config: self,
            provider,
        })
    }
}

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A setting it cannot work with (the message names it).
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Database(#[from] kurir_store::SetupError),
}

/// A running worker. To stop it cleanly, fire its shutdown token, then
/// [`Worker::wait`]; [`Worker::abort`] stops it at once, as a kill would.
pub struct Worker {
    db: Db,
    publisher: Publisher,
    consuming: watch::Receiver<LinkState>,
    tasks: Tasks,
    /// How long after shutdown [`Worker::wait`] waits before it stops what is left.
    stop_limit: Duration,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("publisher", &self.publisher)
            .field("tasks", &self.tasks)
            .finish()
    }
}

impl Worker {
    /// Checks the settings and starts the relay and the consumer. Returns at
    /// once; connections are made (and re-made) in the background.
    pub fn start(config: Config, shutdown: CancellationToken) -> Result<Self, WorkerError> {
        let checked = config.check()?;
        Self::start_with(checked.config, checked.provider, shutdown)
    }

    /// `kurir worker`: binds `KURIR_WORKER_METRICS_ADDR`, starts the worker
    /// and serves its [`health`] endpoints there. The settings were checked
    /// first ([`Config::check`]), so a bad one stops the process before it
    /// listens; a worker that cannot serve its endpoints does not start.
    pub async fn serve(checked: Checked, shutdown: CancellationToken) -> Result<Self, WorkerError> {
        let addr = checked.config.worker.worker_metrics_addr;
        let listener = health::bind(addr).await.map_err(WorkerError::Settings)?;
        if let Ok(bound) = listener.local_addr() {
            info!(addr = %bound, "worker health endpoints listening");
        }
        let worker = Self::start_with(checked.config, checked.provider, shutdown.clone())?;
        let probe = health::Probe {
            db: worker.db.clone(),
            publisher: worker.publisher.clone(),
            consuming: worker.consuming.clone(),
        };
        worker.tasks.spawn(async move {
            if let Err(err) = health::serve_on(listener, probe, shutdown).await {
                error!(%addr, error = %err, "the worker's health endpoints failed (KURIR_WORKER_METRICS_ADDR)");
            }
        });
        Ok(worker)
    }

    /// As [`Worker::start`], with a provider of the caller's choosing.
    pub fn start_with(
        config: Config,
        provider: Arc<dyn Provider>,
        shutdown: CancellationToken,
    ) -> Result<Self, WorkerError> {
        let db = Db::connect_lazily(&config.database)?;
        let pg_config = kurir_store::pg_config(&config.database)?;
        let topology = Topology::new(config.bus.queue_prefix.clone());
        let tasks = Tasks::new();
        let publisher = Publisher::start(
            config.bus.amqp_url.clone(),
            topology.clone(),
            "kurir-worker-publish".into(),
            &tasks,
            shutdown.clone(),
        );

        let wake = Arc::new(tokio::sync::Notify::new());
        tasks.spawn(listen::run(
            pg_config,
            &[pipeline::RELAY_CHANNEL],
            {
                // A notification, or a (re)connect that may have missed one.
                let wake = wake.clone();
                move |_| wake.notify_one()
            },
            shutdown.clone(),
        ));
        let relay_config = RelayConfig {
            interval: config.worker.relay_interval,
            batch: config.worker.relay_batch,
            publish_lease: config.worker.publish_lease,
            republish_after: config.worker.republish_after,
        };
        tasks.spawn(relay::run(
            db.clone(),
            publisher.clone(),
            wake,
            relay_config,
            shutdown.clone(),
        ));
        tasks.spawn(housekeeping::run(
            db.clone(),
            housekeeping::INTERVAL,
            shutdown.clone(),
        ));
        kurir_core::telemetry::prometheus();
        tasks.spawn(sampler::run(
            db.clone(),
            publisher.clone(),
            shutdown.clone(),
        ));

        let sender = provider.sender().map(Arc::from);
        let deliverer = Arc::new(Deliverer {
            db: db.clone(),
            provider,
            publisher: publisher.clone(),
            retry: RetryPolicy::from(&config.retry),
            lease: config.worker.delivery_lease,
            call_limit: config.provider.call_limit(),
            groups: group::Groups::start(db.clone(), config.worker.delivery_lease, sender, &tasks),
        });
        let (consuming_sender, consuming) = watch::channel(Err("not consuming yet".to_owned()));
        tasks.spawn(kurir_bus::report_broker(
            vec![publisher.connected(), consuming.clone()],
            shutdown.clone(),
        ));
        tasks.spawn(consume(
            config.clone(),
            topology,
            deliverer,
            consuming_sender,
            tasks.clone(),
            shutdown.clone(),
        ));
        info!(
            provider = ?config.provider.provider,
            concurrency = config.worker.worker_concurrency,
            queue_prefix = %config.bus.queue_prefix,
            "worker started"
        );
        Ok(Self {
            db,
            publisher,
            consuming,
            tasks,
            // The grace, the releases after it, and closing connections.
            stop_limit: config.shutdown.shutdown_grace
                + config.database.db_timeout
                + Duration::from_secs(5),
            shutdown,
        })
    }

    /// Runs until the shutdown token fires, then waits for the worker to
    /// stop. Tasks still running well past the grace period (a stalled
    /// dependency, a health check holding its connection open) are stopped.
    pub async fn wait(self) {
        let overdue = async {
            self.shutdown.cancelled().await;
            tokio::time::sleep(self.stop_limit).await;
        };
        tokio::select! {
            () = self.tasks.wait() => {}
            () = overdue => {
                warn!(
                    left = self.tasks.len(),
                    "tasks still running well after the grace period; stopping them"
                );
                self.tasks.abort();
            }
        }
        self.db.pool().close();
    }

    /// Stops at once, as if the process were killed: nothing is settled,
    /// leases and unacked envelopes are left for others to recover.
    pub fn abort(self) {
        self.tasks.abort();
    }
}

/// How often the consumer looks at its queue (see [`attached`]).
const CONSUMER_CHECK: Duration = Duration::from_secs(5);

/// Whether this worker's consumer still gets what its queue holds. Not if
/// the queue is gone or has no consumer at all (RabbitMQ 3.10 sends no
/// `basic.cancel` when a quorum queue is deleted under its consumers), nor if
/// the consumer has sat idle with free slots for a whole check period while
/// the queue kept envelopes ready (`ready_before`, the previous look): a
/// consumer the broker no longer delivers to, whatever other workers do.
pub fn attached(state: Option<QueueState>, idle_all_period: bool, ready_before: u32) -> bool {
    let Some(state) = state else {
        return false;
    };
    let starving = idle_all_period && state.ready > 0 && ready_before > 0;
    state.consumers > 0 && !starving
}

/// How a subscription ended.
enum Ended {
    Shutdown,
    Lost(String),
    Detached,
}

/// The consuming side, on its own connection. The subscription is opened,
/// read until it ends, and replaced whole: the broker requeues what the old
/// connection held, so no prefetch window is ever stranded. Deliveries in
/// flight carry on across a replacement (their acks then fail, which is
/// harmless: their rows hold the outcome).
async fn consume(
    config: Config,
    topology: Topology,
    deliverer: Arc<Deliverer>,
    consuming: watch::Sender<LinkState>,
    tasks: Tasks,
    shutdown: CancellationToken,
) {
    let concurrency = config.worker.worker_concurrency;
    let slots = Arc::new(Semaphore::new(usize::from(concurrency)));
    let in_flight = TaskTracker::new();
    // Fired when the shutdown grace ends: deliveries still waiting for their
    // provider give their rows back.
    let cut_off = CancellationToken::new();
    let mut reconnect = kurir_bus::reconnect_schedule();
    let mut first = true;
    let run = Run {
        slots: &slots,
        in_flight: &in_flight,
        tasks: &tasks,
        deliverer: &deliverer,
        cut_off: &cut_off,
        shutdown: &shutdown,
    };
    let subscription = loop {
        let opened = Subscription::open(
            &config.bus.amqp_url,
            &topology,
            concurrency,
            "kurir-worker",
            &mut reconnect,
            first,
            &shutdown,
        )
        .await;
        let mut subscription = match opened {
            Ok(subscription) => subscription,
            Err(BusError::ShutDown) => break None,
            Err(err) => {
                if first || reconnect.worth_saying() {
                    warn!(error = %err, "cannot start consuming; retrying");
                }
                if !reconnect.pause(&shutdown).await {
                    break None;
                }
                continue;
            }
        };
        first = false;
        let connected_at = Instant::now();
        let _previous = consuming.send_replace(Ok(()));
        let ended = run.read(&mut subscription).await;
        let why = match ended {
            Ended::Shutdown => {
                let _previous = consuming.send_replace(Err("shutting down".into()));
                break Some(subscription);
            }
            Ended::Lost(why) => {
                debug!(reason = %why, "consumer connection lost; replacing it");
                why
            }
            Ended::Detached => {
                warn!("this worker's consumer no longer gets its queue's envelopes; reconnecting");
                "the consumer was detached from its queue".to_owned()
            }
        };
        let _previous = consuming.send_replace(Err(why));
        subscription.close("reconnecting").await;
        if connected_at.elapsed() >= kurir_bus::STABLE_AFTER {
            reconnect.succeeded();
        }
        if !reconnect.pause(&shutdown).await {
            break None;
        }
    };
    // Stop taking work, finish what is in flight within the grace period,
    // then cut off the rest (each gives its row back), and only then close
    // the connection: the broker requeues the prefetched envelopes never started.
    if let Some(subscription) = &subscription {
        subscription.cancel().await;
    }
    in_flight.close();
    let grace = config.shutdown.shutdown_grace;
    if tokio::time::timeout(grace, in_flight.wait()).await.is_err() {
        warn!(
            left = in_flight.len(),
            "grace period over; releasing deliveries still in flight"
        );
        cut_off.cancel();
        in_flight.wait().await;
    }
    if let Some(subscription) = subscription {
        subscription.close("worker stopped").await;
    }
    info!("worker stopped consuming");
}

/// What reading one subscription needs.
struct Run<'a> {
    slots: &'a Arc<Semaphore>,
    in_flight: &'a TaskTracker,
    tasks: &'a Tasks,
    deliverer: &'a Arc<Deliverer>,
    cut_off: &'a CancellationToken,
    shutdown: &'a CancellationToken,
}

impl Run<'_> {
    /// Takes deliveries while a slot is free, each on its own task, until the
    /// subscription ends, stops getting envelopes, or shutdown.
    async fn read(&self, subscription: &mut Subscription) -> Ended {
        let mut check = tokio::time::interval(CONSUMER_CHECK);
        // Time spent waiting for a free slot is no reason to look several times.
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.reset();
        let mut ready_before = 0;
        let lost = subscription.lost();
        tokio::pin!(lost);
        loop {
            let permit = tokio::select! {
                () = self.shutdown.cancelled() => return Ended::Shutdown,
                why = &mut lost => return Ended::Lost(why),
                permit = self.slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return Ended::Shutdown,
                },
            };
            let idle_since = Instant::now();
            let delivery = loop {
                tokio::select! {
                    () = self.shutdown.cancelled() => return Ended::Shutdown,
                    why = &mut lost => return Ended::Lost(why),
                    _ = check.tick() => {
                        let state = subscription.queue_state().await;
                        let idle = idle_since.elapsed() >= CONSUMER_CHECK;
                        if !attached(state, idle, ready_before) {
                            return Ended::Detached;
                        }
                        ready_before = state.map_or(0, |s| s.ready);
                    }
                    delivery = subscription.next() => match delivery {
                        Some(delivery) => break delivery,
                        None => return Ended::Lost("the broker ended the consumer".into()),
                    },
                }
            };
            let deliverer = self.deliverer.clone();
            let cut_off = self.cut_off.clone();
            self.tasks.spawn(self.in_flight.track_future(async move {
                let settle = deliverer.handle(&delivery, &cut_off).await;
                deliverer.settle(&delivery, settle).await;
                drop(permit);
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ready: u32, consumers: u32) -> Option<QueueState> {
        Some(QueueState { ready, consumers })
    }

    #[test]
    fn a_consumer_is_attached_while_its_queue_has_consumers_and_it_gets_envelopes() {
        assert!(attached(state(0, 1), true, 0));
        assert!(attached(state(500, 2), false, 500), "busy: not starving");
        assert!(attached(state(5, 2), true, 0), "envelopes just arrived");
    }

    #[test]
    fn a_gone_queue_no_consumers_or_starving_with_free_slots_is_not_attached() {
        assert!(!attached(None, false, 0));
        assert!(!attached(state(0, 0), false, 0));
        assert!(
            !attached(state(64, 1), true, 64),
            "idle all along while envelopes wait: orphaned"
        );
    }
}
