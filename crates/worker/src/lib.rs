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

use std::{sync::Arc, time::Duration};

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

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Bus(#[from] kurir_bus::BusError),
}

/// A running worker. Dropping it does not stop it: fire the shutdown token,
/// then [`Worker::wait`].
pub struct Worker {
    pool: Pool,
    publisher: Publisher,
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
            .check(&config.provider)
            .map_err(WorkerError::Config)?;
        let provider = provider::from_args(&config.provider).map_err(WorkerError::Config)?;
        Self::start_with(config, provider, shutdown)
    }

    /// As [`Worker::start`], with a provider of the caller's choosing.
    pub fn start_with(
        config: Config,
        provider: Arc<dyn Provider>,
        shutdown: CancellationToken,
    ) -> Result<Self, WorkerError> {
        let pool = kurir_store::pool(&config.database).map_err(WorkerError::Config)?;
        let pg_config = kurir_store::pg_config(&config.database).map_err(WorkerError::Config)?;
        let topology = Topology::new(config.bus.queue_prefix.clone());
        let publisher = Publisher::start(
            config.bus.amqp_url.clone(),
            topology.clone(),
            "kurir-worker-publish".into(),
            shutdown.clone(),
        );
        let mut tasks = JoinSet::new();

        let wake = Arc::new(tokio::sync::Notify::new());
        let listener = listen::spawn_listener(
            pg_config,
            pipeline::RELAY_CHANNEL,
            wake.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            let _ = listener.await;
        });
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
        });
        tasks.spawn(consume(
            config.clone(),
            topology,
            deliverer,
            pool.clone(),
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
            tasks,
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
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
        self.tasks.detach_all();
    }
}

/// The consuming side: its own connection, a consumer on the deliveries queue
/// (prefetch = concurrency) and one on the redeliver queue.
async fn consume(
    config: Config,
    topology: Topology,
    deliverer: Arc<Deliverer>,
    pool: Pool,
    shutdown: CancellationToken,
) {
    let connection =
        match kurir_bus::connect(&config.bus.amqp_url, "kurir-worker-consume", &shutdown).await {
            Ok(connection) => connection,
            Err(kurir_bus::BusError::ShutDown) => return,
            Err(err) => {
                error!(error = %err, "cannot connect to RabbitMQ");
                return;
            }
        };
    // The publisher declares the topology; the queues must exist before we consume.
    while !deliverer
        .publisher
        .wait_connected(Duration::from_secs(1))
        .await
    {
        if shutdown.is_cancelled() {
            return;
        }
    }
    let concurrency = config.worker.worker_concurrency;
    let (deliveries_queue, redeliver_queue) = (topology.deliveries(), topology.redeliver());
    let consumers = tokio::try_join!(
        Consumer::start(&connection, &deliveries_queue, concurrency, "kurir-worker"),
        Consumer::start(&connection, &redeliver_queue, 16, "kurir-worker-redeliver"),
    );
    let (mut deliveries, mut redeliveries) = match consumers {
        Ok(consumers) => consumers,
        Err(err) => {
            error!(error = %err, "cannot start consuming");
            return;
        }
    };
    let db_timeout = config.database.db_timeout;
    let redeliver_shutdown = shutdown.clone();
    let redeliver = tokio::spawn(async move {
        loop {
            let delivery = tokio::select! {
                () = redeliver_shutdown.cancelled() => break,
                delivery = redeliveries.next() => match delivery { Some(d) => d, None => break },
            };
            hand_back(&pool, db_timeout, delivery).await;
        }
        redeliveries.close().await;
    });

    let slots = Arc::new(Semaphore::new(usize::from(concurrency)));
    let mut in_flight = JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
        };
        let delivery = tokio::select! {
            () = shutdown.cancelled() => break,
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
    // Stop taking work, finish what is in flight, then let the broker
    // requeue whatever prefetched envelopes were never started.
    deliveries.cancel().await;
    let grace = config.pipeline.shutdown_grace;
    let drained = tokio::time::timeout(grace, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = in_flight.len(),
            "shutdown grace over; abandoning deliveries in flight (their leases will expire)"
        );
        in_flight.abort_all();
    }
    deliveries.close().await;
    let _ = redeliver.await;
    let _ = connection.close(200, "worker stopped".into()).await;
    info!("worker stopped consuming");
}

/// An envelope the broker dead-lettered after too many deliveries: mark its
/// row unpublished so the relay sends it again, then ack.
async fn hand_back(pool: &Pool, db_timeout: Duration, delivery: kurir_bus::Delivery) {
    let Ok(envelope) = delivery.envelope else {
        warn!("undecodable envelope in the redeliver queue; dropping it");
        delivery.ack().await;
        return;
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
            delivery.requeue().await;
        }
    }
}
