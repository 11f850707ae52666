//! The consuming side: a [`Subscription`] is one connection with one consumer
//! on `{p}.deliveries` (manual acks, a prefetch limit) and a channel for
//! looking at the queue. It is never repaired: when its connection is lost it
//! ends ([`Subscription::next`] returns `None`), its owner closes it (the
//! broker then requeues whatever it had delivered on it) and opens a new one.

use futures_util::StreamExt;
use kurir_core::runtime::Reconnect;
use lapin::{
    Acker, Channel, Connection,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use kurir_core::TraceContext;

use crate::{BusError, DecodeError, Envelope, Topology, connection};

/// How long a look at the queue may take.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One envelope from the broker, to ack once its outcome is recorded.
pub struct Delivery {
    pub envelope: Result<Envelope, DecodeError>,
    pub payload: Vec<u8>,
    /// The AMQP `message_id` (the row's id, for envelopes kurir published).
    pub message_id: Option<String>,
    pub redelivered: bool,
    acker: Acker,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("envelope", &self.envelope)
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

impl Delivery {
    fn from_lapin(delivery: lapin::message::Delivery) -> Self {
        // The request's trace, from the `traceparent` header.
        let trace = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|headers| headers.inner().get(TraceContext::HEADER))
            .and_then(|value| match value {
                lapin::types::AMQPValue::LongString(text) => {
                    TraceContext::parse(&String::from_utf8_lossy(text.as_bytes()))
                }
                _ => None,
            });
        Delivery {
            envelope: Envelope::decode(&delivery.data).map(|e| e.traced(trace)),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string()),
            redelivered: delivery.redelivered,
            acker: delivery.acker,
            payload: delivery.data,
        }
    }

    /// Acks; false if the ack could not be sent (its connection was lost):
    /// the broker then delivers the envelope again, which is harmless.
    pub async fn ack(&self) -> bool {
        self.settle("ack", self.acker.ack(BasicAckOptions::default()).await)
    }

    /// Hands the envelope back to the queue for another worker.
    pub async fn requeue(&self) -> bool {
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        self.settle("requeue", self.acker.nack(options).await)
    }

    /// Drops the envelope (it dead-letters if its queue has a dead-letter exchange).
    pub async fn reject(&self) -> bool {
        let options = BasicRejectOptions { requeue: false };
        self.settle("reject", self.acker.reject(options).await)
    }

    fn settle(&self, what: &str, result: lapin::Result<bool>) -> bool {
        match result {
            Ok(true) => true,
            Ok(false) => {
                debug!(
                    action = what,
                    "delivery already settled or its connection was lost; the broker will redeliver it"
                );
                false
            }
            Err(err) => {
                debug!(action = what, error = %err, "could not settle a delivery; the broker will redeliver it");
                false
            }
        }
    }
}

/// What a look at the consumed queue found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueState {
    /// Envelopes waiting to be delivered to a consumer (not the unacked ones).
    pub ready: u32,
    /// Consumers attached, from every worker.
    pub consumers: u32,
}

/// One connection consuming `{p}.deliveries`.
pub struct Subscription {
    connection: Connection,
    channel: Channel,
    check: Channel,
    inner: lapin::Consumer,
    tag: String,
    queue: String,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("tag", &self.tag)
            .finish()
    }
}

impl Subscription {
    /// Connects (retrying on `reconnect`'s schedule until the broker answers
    /// or `shutdown` fires), declares the topology (a queue deleted under us
    /// comes back) and starts consuming with at most `prefetch` unacked
    /// deliveries. `first`: this process has not been connected yet (its
    /// first failure is worth a warning).
    pub async fn open(
        url: &str,
        topology: &Topology,
        prefetch: u16,
        name: &str,
        reconnect: &mut Reconnect,
        first: bool,
        shutdown: &CancellationToken,
    ) -> Result<Self, BusError> {
        let connection = connection::connect(url, name, reconnect, first, shutdown).await?;
        let queue = topology.deliveries();
        let setup = async {
            let channel = connection.create_channel().await?;
            topology.declare(&channel).await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let check = connection.create_channel().await?;
            let inner = channel
                .basic_consume(
                    queue.as_str().into(),
                    name.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, BusError>((channel, check, inner))
        };
        match tokio::time::timeout(CHECK_TIMEOUT, setup).await {
            Ok(Ok((channel, check, inner))) => {
                // Workers always run, so they move an old dead-letter queue's
                // letters (it logs what it did; a failure is tried again at
                // the next connect and loses nothing).
                let _ = topology.migrate_legacy_dead(&connection).await;
                Ok(Self {
                    connection,
                    channel,
                    check,
                    inner,
                    tag: name.to_owned(),
                    queue,
                })
            }
            Ok(Err(err)) => {
                connection::close(&connection, "setup failed").await;
                Err(err)
            }
            Err(_) => {
                connection::close(&connection, "setup timed out").await;
                Err(BusError::Timeout(CHECK_TIMEOUT))
            }
        }
    }

    /// The next delivery; `None` once the consumer is cancelled or its
    /// connection is lost (the subscription is then finished).
    pub async fn next(&mut self) -> Option<Delivery> {
        match self.inner.next().await? {
            Ok(delivery) => Some(Delivery::from_lapin(delivery)),
            Err(err) => {
                debug!(consumer = %self.tag, error = %err, "consumer stream failed");
                None
            }
        }
    }

    /// A look at the consumed queue; `None` if it is gone or the broker does
    /// not answer (either way this subscription should be replaced).
    pub async fn queue_state(&self) -> Option<QueueState> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let check =
            self.check
                .queue_declare(self.queue.as_str().into(), options, FieldTable::default());
        match tokio::time::timeout(CHECK_TIMEOUT, check).await {
            Ok(Ok(queue)) => Some(QueueState {
                ready: queue.message_count(),
                consumers: queue.consumer_count(),
            }),
            Ok(Err(err)) => {
                warn!(consumer = %self.tag, queue = %self.queue, error = %err, "the consumed queue is gone");
                None
            }
            Err(_) => {
                warn!(consumer = %self.tag, queue = %self.queue, "the broker did not answer a queue check");
                None
            }
        }
    }

    /// Resolves, with the reason, once this subscription's connection is no
    /// longer usable; it can be awaited while the subscription is read.
    pub fn lost(&self) -> impl std::future::Future<Output = String> + Send + use<> {
        connection::lost(&self.connection, &[&self.channel])
    }

    /// Stops new deliveries; those already received can still be settled.
    pub async fn cancel(&self) {
        let cancel = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default());
        match tokio::time::timeout(CHECK_TIMEOUT, cancel).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                debug!(consumer = %self.tag, error = %err, "cancel failed (channel already gone)")
            }
            Err(_) => debug!(consumer = %self.tag, "the broker did not answer a cancel"),
        }
    }

    /// Closes the connection: the broker requeues whatever is still unacked.
    pub async fn close(self, why: &str) {
        connection::close(&self.connection, why).await;
    }
}
