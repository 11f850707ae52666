//! A consumer with manual acks and a prefetch limit. Recovery errors the
//! stream reports while lapin reconnects are waited out here; deliveries that
//! were in flight then are redelivered by the broker (acking them on the old
//! channel reports `false`).

use futures_util::StreamExt;
use lapin::{
    Acker, Channel, Connection,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions, QueueDeclareOptions,
    },
    types::FieldTable,
};
use tracing::{debug, error, warn};

use crate::{BusError, DecodeError, Envelope};

pub struct Consumer {
    channel: Channel,
    inner: lapin::Consumer,
    tag: String,
    queue: String,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer").field("tag", &self.tag).finish()
    }
}

/// One envelope from the broker, to ack once its outcome is recorded.
pub struct Delivery {
    pub envelope: Result<Envelope, DecodeError>,
    pub payload: Vec<u8>,
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
    /// Acks; false if the ack could not be sent (its channel was lost in a
    /// reconnect): the broker then delivers the envelope again, which is harmless.
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
                    "delivery already settled or its channel was lost; the broker will redeliver it"
                );
                false
            }
            Err(err) => {
                warn!(action = what, error = %err, "could not settle a delivery; the broker will redeliver it");
                false
            }
        }
    }
}

impl Consumer {
    /// Starts consuming `queue` on a new channel with `prefetch` unacked deliveries at most.
    pub async fn start(
        connection: &Connection,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<Self, BusError> {
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let inner = channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            channel,
            inner,
            tag: tag.to_owned(),
            queue: queue.to_owned(),
        })
    }

    /// The next delivery; `None` once the consumer is cancelled or its
    /// connection cannot be recovered.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            match self.inner.next().await? {
                Ok(delivery) => {
                    return Some(Delivery {
                        envelope: Envelope::decode(&delivery.data),
                        redelivered: delivery.redelivered,
                        acker: delivery.acker,
                        payload: delivery.data,
                    });
                }
                Err(err) => {
                    warn!(consumer = %self.tag, error = %err, "consumer interrupted; waiting for RabbitMQ recovery");
                    if let Err(err) = self.channel.wait_for_recovery(err).await {
                        error!(consumer = %self.tag, error = %err, "consumer cannot recover");
                        return None;
                    }
                    debug!(consumer = %self.tag, "consumer recovered");
                }
            }
        }
    }

    /// Whether the queue still exists and has consumers. A queue deleted
    /// under a consumer does not always cancel it (RabbitMQ 3.10 quorum
    /// queues send no `basic.cancel`), leaving a consumer that will never get
    /// another delivery; call this now and then and start again on false.
    pub async fn still_attached(&self) -> bool {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let check =
            self.channel
                .queue_declare(self.queue.as_str().into(), options, FieldTable::default());
        match tokio::time::timeout(std::time::Duration::from_secs(5), check).await {
            Ok(Ok(queue)) => {
                debug!(consumer = %self.tag, queue = %self.queue, consumers = queue.consumer_count(), messages = queue.message_count(), "queue check");
                queue.consumer_count() > 0
            }
            Ok(Err(err)) => {
                warn!(consumer = %self.tag, queue = %self.queue, error = %err, "consumed queue is gone");
                false
            }
            Err(_) => {
                warn!(consumer = %self.tag, queue = %self.queue, "the broker did not answer a queue check");
                false
            }
        }
    }

    /// Stops new deliveries; those already received can still be settled.
    pub async fn cancel(&self) {
        if let Err(err) = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            debug!(consumer = %self.tag, error = %err, "cancel failed (channel already gone)");
        }
    }

    /// Closes the channel: the broker requeues whatever is still unacked.
    pub async fn close(&self) {
        let _ = self.channel.close(200, "consumer closed".into()).await;
    }
}
