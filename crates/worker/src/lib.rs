//! kurir's worker: the relay (outbox sweeper and retry scheduler), and the
//! consume → claim → deliver → record → ack loop, with its providers.
//!
//! Retries wait in Postgres (`due_at`), never in a sleeping task: they survive
//! restarts, show in polling, and cost no worker slot. Run as many workers as
//! you like; they share the work through the queue and `SKIP LOCKED`.

pub mod deliver;
pub mod provider;
pub mod relay;
pub mod retry;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use kurir_bus::{Consumer, Publisher, Topology};
use kurir_core::config::{
    BusArgs, DatabaseArgs, PipelineArgs, ProviderArgs, RetryArgs, WorkerArgs,
};
use kurir_store::PgPool as Pool;
use kurir_store::{listen, pipeline, timed};
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::{deliver::Deliverer, provider::Provider, relay::RelayConfig, retry::RetryPolicy};

/// Everything `kurir worker` reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseArgs,
    pub bus: BusArgs,
    pub pipeline: PipelineArgs,
    pub worker: WorkerArgs,
    pub provider: ProviderArgs,
    pub retry: RetryArgs,
}

/// A setting the worker cannot start with; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WorkerError(pub String);

/// A running worker. To stop it cleanly, fire its shutdown token, then
/// [`Worker::wait`]; dropping it stops it at once, like [`Worker::abort`].
pub struct Worker {
    pool: Pool,
    publisher: Publisher,
    consuming: Arc<AtomicBool>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("publisher", &self.publisher)
            .finish()
    }
}

impl Worker {
    /// Checks the settings and starts the relay and the consumers. Returns at
    /// once; connections are made (and re-made) in the background.
    pub fn start(config: Config, shutdown: CancellationToken) -> Result<Self, WorkerError> {
        config
            .worker
            .check(&config.provider, &config.database)
            .map_err(WorkerError)?;
        let provider = provider::from_args(&config.provider).map_err(WorkerError)?;
        Self::start_with(config, provider, shutdown)
    }

    /// As [`Worker::start`], with a provider of the caller's choosing.
    pub fn start_with(
        config: Config,
        provider: Arc<dyn Provider>,
        shutdown: CancellationToken,
    ) -> Result<Self, WorkerError> {
        let pool = kurir_store::pool(&config.database).map_err(WorkerError)?;
        let pg_config = kurir_store::pg_config(&config.database).map_err(WorkerError)?;
        let topology = Topology::new(config.bus.queue_prefix.clone());
        let publisher = Publisher::start(
            config.bus.amqp_url.clone(),
            topology.clone(),
            "kurir-worker-publish".into(),
            shutdown.clone(),
        );
        let mut tasks = JoinSet::new();

        let wake = Arc::new(tokio::sync::Notify::new());
        tasks.spawn(listen::run(
            pg_config,
            pipeline::RELAY_CHANNEL,
            wake.clone(),
            shutdown.clone(),
        ));
        let relay_config = RelayConfig {
            interval: config.worker.relay_interval,
            batch: config.worker.relay_batch,
            publish_lease: config.pipeline.publish_lease,
            db_timeout: config.database.db_timeout,
        };
        tasks.spawn(relay::run(
            pool.clone(),
            publisher.clone(),
            wake,
            relay_config,
            shutdown.clone(),
        ));

        let deliverer = Arc::new(Deliverer {
            pool: pool.clone(),
            provider,
            publisher: publisher.clone(),
            retry: RetryPolicy::from(&config.retry),
            lease: config.worker.delivery_lease,
            db_timeout: config.database.db_timeout,
            provider_timeout: config.provider.provider_timeout,
            shutdown: shutdown.clone(),
            held: Default::default(),
        });
        let consuming = Arc::new(AtomicBool::new(false));
        tasks.spawn(consume(
            config.clone(),
            topology,
            deliverer,
            consuming.clone(),
            shutdown.clone(),
        ));
        info!(
            provider = ?config.provider.provider,
            concurrency = config.worker.worker_concurrency,
            queue_prefix = %config.bus.queue_prefix,
            "worker started"
        );
        Ok(Self {
            pool,
            publisher,
            consuming,
            tasks,
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// True while the consumers are running (for readiness).
    pub fn consuming(&self) -> Arc<AtomicBool> {
        self.consuming.clone()
    }

    /// Waits for the worker to stop after its shutdown token fired.
    pub async fn wait(mut self) {
        while let Some(result) = self.tasks.join_next().await {
            if let Err(err) = result
                && err.is_panic()
            {
                error!(error = %err, "a worker task panicked");
            }
        }
        self.publisher.closed().await;
        self.pool.close();
    }

    /// Stops at once, as if the process were killed: nothing is settled,
    /// leases and unacked envelopes are left for others to recover.
    pub fn abort(mut self) {
        self.tasks.abort_all();
    }
}

/// The consuming side, on its own connection: a consumer on the deliveries
/// queue (prefetch = concurrency) and one on the redeliver queue. If they stop
/// (the broker cancelled them, or recovery failed), they are started again.
async fn consume(
    config: Config,
    topology: Topology,
    deliverer: Arc<Deliverer>,
    consuming: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        let result = consume_once(&config, &topology, &deliverer, &consuming, &shutdown).await;
        consuming.store(false, Ordering::Relaxed);
        if shutdown.is_cancelled() {
            break;
        }
        match result {
            Ok(()) => warn!("consumers stopped; starting them again"),
            Err(err) => warn!(error = %err, "cannot consume; trying again"),
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    info!("worker stopped consuming");
}

/// How often the consumer checks that its queue still exists and still has
/// it as a consumer (see `Consumer::still_attached`).
const CONSUMER_CHECK: Duration = Duration::from_secs(5);

/// Bounds a broker call made while stopping: a blocked broker must not hold
/// the exit.
async fn briefly<F: Future>(step: F) {
    let _ = tokio::time::timeout(Duration::from_secs(5), step).await;
}

async fn consume_once(
    config: &Config,
    topology: &Topology,
    deliverer: &Arc<Deliverer>,
    consuming: &AtomicBool,
    shutdown: &CancellationToken,
) -> Result<(), kurir_bus::BusError> {
    let connection =
        kurir_bus::connect(&config.bus.amqp_url, "kurir-worker-consume", shutdown).await?;
    // The publisher declares the topology; the queues must exist before we consume.
    while !deliverer
        .publisher
        .wait_connected(Duration::from_secs(1))
        .await
    {
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
    // Declare (idempotently) what we consume: a queue deleted under us comes back.
    let setup = connection.create_channel().await?;
    topology.declare(&setup).await?;
    briefly(setup.close(200, "declared".into())).await;
    let concurrency = config.worker.worker_concurrency;
    let (deliveries_queue, redeliver_queue) = (topology.deliveries(), topology.redeliver());
    let started = tokio::try_join!(
        Consumer::start(&connection, &deliveries_queue, concurrency, "kurir-worker"),
        Consumer::start(&connection, &redeliver_queue, 16, "kurir-worker-redeliver"),
    );
    let (mut deliveries, mut redeliveries) = match started {
        Ok(consumers) => consumers,
        Err(err) => {
            briefly(connection.close(200, "worker restarting".into())).await;
            return Err(err);
        }
    };
    consuming.store(true, Ordering::Relaxed);
    let (pool, db_timeout) = (deliverer.pool.clone(), config.database.db_timeout);
    // Stops with the deliveries consumer, or at shutdown.
    let stop_redeliver = shutdown.child_token();
    let redeliver = {
        let stop = stop_redeliver.clone();
        let deliverer = deliverer.clone();
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    () = stop.cancelled() => break,
                    delivery = redeliveries.next() => match delivery { Some(d) => d, None => break },
                };
                hand_back(&pool, db_timeout, &deliverer, delivery).await;
            }
            briefly(redeliveries.close()).await;
        })
    };

    let slots = Arc::new(Semaphore::new(usize::from(concurrency)));
    let mut in_flight = JoinSet::new();
    let mut check = tokio::time::interval(CONSUMER_CHECK);
    check.reset();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
        };
        let delivery = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = check.tick() => {
                if deliveries.still_attached().await {
                    continue;
                }
                break;
            }
            delivery = deliveries.next() => match delivery { Some(d) => d, None => break },
        };
        let deliverer = deliverer.clone();
        in_flight.spawn(async move {
            deliverer.handle(delivery).await;
            drop(permit);
        });
        // Reap finished tasks so the set stays small.
        while in_flight.try_join_next().is_some() {}
    }
    consuming.store(false, Ordering::Relaxed);
    // Stop taking work, finish what is in flight, release what is cut off,
    // then let the broker requeue prefetched envelopes never started.
    briefly(deliveries.cancel()).await;
    let grace = config.pipeline.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = in_flight.len(),
            "grace period over; releasing deliveries still in flight"
        );
        in_flight.abort_all();
        while in_flight.join_next().await.is_some() {}
        deliverer.release_held().await;
    }
    stop_redeliver.cancel();
    briefly(deliveries.close()).await;
    let _ = redeliver.await;
    briefly(connection.close(200, "worker stopped".into())).await;
    Ok(())
}

/// An envelope the broker dead-lettered after too many deliveries: mark its
/// row unpublished so the relay sends it again, then ack.
async fn hand_back(
    pool: &Pool,
    db_timeout: Duration,
    deliverer: &Deliverer,
    delivery: kurir_bus::Delivery,
) {
    let Ok(envelope) = delivery.envelope else {
        // Not ours to retry; keep it for a person to look at.
        return deliverer.handle(delivery).await;
    };
    let result = timed(db_timeout, async {
        let client = pool.get().await?;
        pipeline::unpublish(&client, envelope.kind, envelope.id).await
    })
    .await;
    match result {
        Ok(changed) => {
            warn!(kind = %envelope.kind, id = %envelope.id, republish = changed, "the broker dead-lettered an envelope; handing it back to the relay");
            delivery.ack().await;
        }
        Err(err) => {
            warn!(error = %err, "cannot hand a dead-lettered envelope back yet");
            tokio::time::sleep(Duration::from_secs(1)).await;
            delivery.requeue().await;
        }
    }
}
