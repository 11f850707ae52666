//! A publisher on its own connection and confirm-mode channel. Envelopes are
//! persistent and `mandatory`; a publish counts only once the broker confirms
//! it and did not return it as unroutable. Anything else (nack, return,
//! timeout, a confirm lost with its connection) is "not published": the
//! caller leaves the row to the relay.
//!
//! The publisher owns its connection: a background task connects, notices
//! when the connection or channel is lost, throws both away and connects
//! again on the shared reconnect schedule.

use std::{sync::Arc, time::Duration};

use futures_util::future::join_all;
use kurir_core::{TraceContext, runtime::Tasks};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable},
};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    BusError, Envelope, LinkState, Topology,
    connection::{self, reconnect_schedule},
    topology::{ROUTE_DELIVER, ROUTE_UNDECODABLE},
};

/// How long one batch of publishes (sending every envelope and awaiting every
/// confirm) may take before the rest counts as not published.
const BATCH_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to RabbitMQ")]
    NotConnected,
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the broker could not route the message (no queue bound)")]
    Unroutable,
    #[error("no confirm from the broker within {0:?}")]
    Timeout(Duration),
}

struct Ready {
    connection: Connection,
    channel: Channel,
    /// For looking at the queue (a failed look must not close `channel`).
    check: Channel,
}

/// Cheap to clone; all clones share one connection and channel.
#[derive(Clone)]
pub struct Publisher {
    topology: Topology,
    ready: watch::Receiver<Option<Arc<Ready>>>,
    up: watch::Receiver<LinkState>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topology", &self.topology)
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// Why a dead-lettered envelope was parked, for `kurir dlq list`.
pub const REASON_HEADER: &str = "x-kurir-reason";
/// When it was parked (milliseconds since the epoch).
pub const PARKED_AT_HEADER: &str = "x-kurir-parked-at";

/// What [`Publisher::publish_each`] did with each item.
#[derive(Debug)]
pub struct Published<T> {
    /// Confirmed by the broker.
    pub confirmed: Vec<T>,
    /// Not confirmed (refused, timed out, or not sent: the channel failed).
    pub failed: Vec<T>,
    /// Why the first of `failed` failed.
    pub first_error: Option<PublishError>,
}

impl Publisher {
    /// Returns at once and connects in the background on `tasks` (retrying
    /// until the broker answers, and again whenever the connection is lost):
    /// publishing fails with [`PublishError::NotConnected`] meanwhile, so an
    /// API can accept while RabbitMQ is down. The task closes the connection
    /// and ends once `shutdown` fires.
    pub fn start(
        url: String,
        topology: Topology,
        name: String,
        tasks: &Tasks,
        shutdown: CancellationToken,
    ) -> Self {
        let (sender, ready) = watch::channel(None);
        let (up_sender, up) = watch::channel(Err("not connected yet".to_owned()));
        let publisher = Self {
            topology: topology.clone(),
            ready,
            up,
        };
        tasks.spawn(async move {
            let mut reconnect = reconnect_schedule();
            let mut first = true;
            loop {
                let opened = Self::open(&url, &topology, &name, &mut reconnect, first, &shutdown);
                let ready = match opened.await {
                    Ok(ready) => Arc::new(ready),
                    Err(BusError::ShutDown) => return,
                    Err(err) => {
                        if first || reconnect.worth_saying() {
                            warn!(connection = %name, error = %err, "cannot set up the RabbitMQ publisher; retrying");
                        }
                        if !reconnect.pause(&shutdown).await {
                            return;
                        }
                        continue;
                    }
                };
                first = false;
                let connected_at = tokio::time::Instant::now();
                debug!(connection = %name, "publisher connected");
                let _ = sender.send(Some(ready.clone()));
                let _ = up_sender.send(Ok(()));
                // A look at a deleted queue closes `check`: reconnecting declares it again.
                let channels = [&ready.channel, &ready.check];
                let lost = tokio::select! {
                    () = shutdown.cancelled() => None,
                    why = connection::lost(&ready.connection, &channels) => Some(why),
                };
                let _ = sender.send(None);
                let why = lost.clone().unwrap_or_else(|| "shutting down".into());
                let _ = up_sender.send(Err(why));
                match lost {
                    None => {
                        connection::close(&ready.connection, "shutting down").await;
                        return;
                    }
                    Some(why) => {
                        debug!(connection = %name, reason = %why, "publisher lost its connection");
                        connection::close(&ready.connection, "reconnecting").await;
                    }
                }
                if connected_at.elapsed() >= connection::STABLE_AFTER {
                    reconnect.succeeded();
                }
                if !reconnect.pause(&shutdown).await {
                    return;
                }
            }
        });
        publisher
    }

    async fn open(
        url: &str,
        topology: &Topology,
        name: &str,
        reconnect: &mut kurir_core::runtime::Reconnect,
        first: bool,
        shutdown: &CancellationToken,
    ) -> Result<Ready, BusError> {
        let connection = connection::connect(url, name, reconnect, first, shutdown).await?;
        let setup = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            topology.declare(&channel).await?;
            let check = connection.create_channel().await?;
            Ok::<_, BusError>((channel, check))
        };
        match tokio::time::timeout(BATCH_DEADLINE, setup).await {
            Ok(Ok((channel, check))) => Ok(Ready {
                connection,
                channel,
                check,
            }),
            Ok(Err(err)) => {
                connection::close(&connection, "setup failed").await;
                Err(err)
            }
            Err(_) => {
                connection::close(&connection, "setup timed out").await;
                Err(BusError::Timeout(BATCH_DEADLINE))
            }
        }
    }

    /// The publisher's connection, up or down and why (for whoever reports
    /// the broker's state).
    pub fn connected(&self) -> watch::Receiver<LinkState> {
        self.up.clone()
    }

    /// Waits until the publisher is set up (tests and start-up ordering).
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let mut ready = self.ready.clone();
        tokio::time::timeout(limit, ready.wait_for(Option::is_some))
            .await
            .is_ok_and(|result| result.is_ok())
    }

    /// Connected and not blocked by the broker (a memory or disk alarm
    /// blocks publishers: lapin then holds every publish until it clears).
    pub fn is_connected(&self) -> bool {
        self.ready.borrow().as_ref().is_some_and(|ready| {
            connection::usable(&ready.connection, &[&ready.channel])
                && !ready.connection.status().blocked()
        })
    }

    /// Envelopes waiting in `{p}.deliveries` for a consumer (not counting
    /// those delivered and not yet acked); `None` if it cannot be told now.
    pub async fn deliveries_waiting(&self) -> Option<u32> {
        self.queue_depth(&self.topology.deliveries()).await
    }

    /// Envelopes in `{p}.dead-letters`, the dead-letter queue; `None` if it cannot
    /// be told now.
    pub async fn dead_waiting(&self) -> Option<u32> {
        self.queue_depth(&self.topology.dead()).await
    }

    /// Messages ready in `queue` (a passive declare on the check channel).
    async fn queue_depth(&self, queue: &str) -> Option<u32> {
        let check = self
            .ready
            .borrow()
            .as_ref()
            .map(|ready| ready.check.clone())?;
        let options = lapin::options::QueueDeclareOptions {
            passive: true,
            ..lapin::options::QueueDeclareOptions::default()
        };
        let look = check.queue_declare(queue.into(), options, FieldTable::default());
        match tokio::time::timeout(BATCH_DEADLINE, look).await {
            Ok(Ok(queue)) => Some(queue.message_count()),
            _ => None,
        }
    }

    fn channel(&self) -> Result<Channel, PublishError> {
        if !self.is_connected() {
            return Err(PublishError::NotConnected);
        }
        match self.ready.borrow().as_ref() {
            Some(ready) => Ok(ready.channel.clone()),
            None => Err(PublishError::NotConnected),
        }
    }

    async fn send(
        channel: &Channel,
        exchange: &str,
        route: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<PublisherConfirm, PublishError> {
        let properties = properties
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        Ok(channel
            .basic_publish(exchange.into(), route.into(), options, payload, properties)
            .await?)
    }

    async fn confirmed(confirm: PublisherConfirm, deadline: Instant) -> Result<(), PublishError> {
        match tokio::time::timeout_at(deadline, confirm).await {
            Err(_) => Err(PublishError::Timeout(BATCH_DEADLINE)),
            Ok(Err(err)) => Err(err.into()),
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nacked),
            Ok(Ok(Confirmation::NotRequested)) => {
                warn!("publisher channel lost confirm mode");
                Err(PublishError::Nacked)
            }
        }
    }

    /// Publishes one envelope and waits for the broker's confirm.
    pub async fn publish(&self, envelope: &Envelope) -> Result<(), PublishError> {
        self.publish_all(std::slice::from_ref(envelope))
            .await
            .pop()
            .unwrap_or(Err(PublishError::NotConnected))
    }

    /// Publishes one envelope per item (as [`Publisher::publish_all`]) and
    /// sorts the items by outcome: the one place that turns a batch of rows
    /// into envelopes and back, for the API's dispatcher and the relay alike.
    pub async fn publish_each<T: Copy>(
        &self,
        items: &[T],
        envelope_of: impl Fn(&T) -> Envelope,
    ) -> Published<T> {
        let envelopes: Vec<Envelope> = items.iter().map(envelope_of).collect();
        let results = self.publish_all(&envelopes).await;
        let mut published = Published {
            confirmed: Vec::with_capacity(items.len()),
            failed: Vec::new(),
            first_error: None,
        };
        for (item, result) in items.iter().zip(results) {
            match result {
                Ok(()) => published.confirmed.push(*item),
                Err(err) => {
                    published.first_error.get_or_insert(err);
                    published.failed.push(*item);
                }
            }
        }
        published
    }

    /// Publishes several envelopes pipelined (all sent, then all confirms
    /// awaited together), within one deadline for the whole batch: whatever
    /// is not confirmed by then, or not even sent because the channel failed,
    /// counts as not published. One result per envelope, in order.
    pub async fn publish_all(&self, envelopes: &[Envelope]) -> Vec<Result<(), PublishError>> {
        let channel = match self.channel() {
            Ok(channel) => channel,
            Err(err) => return envelopes.iter().map(|_| Err(err.clone())).collect(),
        };
        let deadline = Instant::now() + BATCH_DEADLINE;
        let exchange = self.topology.exchange();
        let mut sent = Vec::with_capacity(envelopes.len());
        // Once one send fails (the channel is gone) or the deadline passes,
        // the rest are not even tried.
        let mut stopped: Option<PublishError> = None;
        for envelope in envelopes {
            let result = match &stopped {
                Some(err) => Err(err.clone()),
                None => {
                    let mut properties =
                        BasicProperties::default().with_message_id(envelope.id.to_string().into());
                    if let Some(trace) = envelope.trace {
                        let mut headers = FieldTable::default();
                        headers.insert(
                            TraceContext::HEADER.into(),
                            AMQPValue::LongString(trace.child().to_string().into()),
                        );
                        properties = properties.with_headers(headers);
                    }
                    let payload = envelope.encode();
                    let send = Self::send(&channel, &exchange, ROUTE_DELIVER, &payload, properties);
                    match tokio::time::timeout_at(deadline, send).await {
                        Ok(result) => result,
                        Err(_) => Err(PublishError::Timeout(BATCH_DEADLINE)),
                    }
                }
            };
            if let Err(err) = &result {
                stopped.get_or_insert_with(|| err.clone());
            }
            sent.push(result);
        }
        let confirms = sent
            .into_iter()
            .map(|sent| async move { Self::confirmed(sent?, deadline).await });
        let results = join_all(confirms).await;
        if results
            .iter()
            .any(|r| matches!(r, Err(PublishError::Unroutable)))
        {
            // Someone deleted a queue or binding: put the topology back.
            warn!("a publish was unroutable; declaring the topology again");
            if let Ok(Err(err)) =
                tokio::time::timeout(BATCH_DEADLINE, self.topology.declare(&channel)).await
            {
                warn!(error = %err, "could not declare the topology");
            }
        }
        results
    }

    /// Parks a payload in `{p}.dead-letters` for a person to look at, with the reason
    /// and the time (shown by `kurir dlq list`). `message_id` is the original
    /// envelope's, if it had one.
    pub async fn park(
        &self,
        payload: &[u8],
        message_id: Option<&str>,
        reason: &str,
    ) -> Result<(), PublishError> {
        let channel = self.channel()?;
        let deadline = Instant::now() + BATCH_DEADLINE;
        let mut headers = FieldTable::default();
        headers.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString(reason.to_owned().into()),
        );
        let now_ms = epoch_millis();
        headers.insert(PARKED_AT_HEADER.into(), AMQPValue::LongLongInt(now_ms));
        let id = message_id
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let properties = BasicProperties::default()
            .with_message_id(id.into())
            .with_headers(headers);
        let exchange = self.topology.dead_letter_exchange();
        let send = Self::send(&channel, &exchange, ROUTE_UNDECODABLE, payload, properties);
        match tokio::time::timeout_at(deadline, send).await {
            Ok(sent) => Self::confirmed(sent?, deadline).await,
            Err(_) => Err(PublishError::Timeout(BATCH_DEADLINE)),
        }
    }
}

fn epoch_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
