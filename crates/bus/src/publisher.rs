//! A publisher on its own connection and confirm-mode channel. Envelopes are
//! persistent and `mandatory`; a publish counts only once the broker confirms
//! it and did not return it as unroutable. Anything else (nack, return,
//! timeout, a confirm lost to a reconnect) is "not published": the caller
//! leaves the row to the relay.

use std::{sync::Arc, time::Duration};

use futures_util::future::join_all;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::{
    BusError, Envelope, Topology, connect,
    topology::{ROUTE_DELIVER, ROUTE_UNDECODABLE},
};

/// How long to wait for the broker's confirm before calling it lost.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

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
}

/// Cheap to clone; all clones share one connection and channel.
#[derive(Clone)]
pub struct Publisher {
    topology: Topology,
    ready: watch::Receiver<Option<Arc<Ready>>>,
    /// Fired once the connection is closed after shutdown.
    closed: CancellationToken,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topology", &self.topology)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Publisher {
    /// Returns at once and connects in the background (retrying until the
    /// broker answers): publishing fails with [`PublishError::NotConnected`]
    /// until then, so an API can accept while RabbitMQ is down.
    pub fn start(
        url: String,
        topology: Topology,
        name: String,
        shutdown: CancellationToken,
    ) -> Self {
        let (sender, ready) = watch::channel(None);
        let closed = CancellationToken::new();
        let publisher = Self {
            topology: topology.clone(),
            ready,
            closed: closed.clone(),
        };
        tokio::spawn(async move {
            // Whichever way this task ends, `closed()` returns after it.
            let _closed = closed.drop_guard();
            let mut delay = Duration::from_millis(200);
            loop {
                match Self::open(&url, &topology, &name, &shutdown).await {
                    Ok(ready) => {
                        let _ = sender.send(Some(Arc::new(ready)));
                        break;
                    }
                    Err(BusError::ShutDown) => return,
                    Err(err) => {
                        error!(error = %err, "cannot set up the RabbitMQ publisher; retrying");
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            }
            shutdown.cancelled().await;
            let ready = sender.borrow().clone();
            if let Some(ready) = ready {
                let _ = ready.connection.close(200, "shutting down".into()).await;
            }
        });
        publisher
    }

    async fn open(
        url: &str,
        topology: &Topology,
        name: &str,
        shutdown: &CancellationToken,
    ) -> Result<Ready, BusError> {
        let connection = connect(url, name, shutdown).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        topology.declare(&channel).await?;
        Ok(Ready {
            connection,
            channel,
        })
    }

    /// Waits until the connection is closed (after shutdown fired), so a
    /// process exits without leaving a half-closed connection behind.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
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
            let connection = ready.connection.status();
            connection.connected() && !connection.blocked() && ready.channel.status().connected()
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
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
        id: Option<String>,
    ) -> Result<PublisherConfirm, PublishError> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(id) = id {
            properties = properties.with_message_id(id.into());
        }
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        // lapin waits for the frame to be written; a blocked connection would
        // hold it for as long as the broker's alarm lasts.
        let publish =
            channel.basic_publish(exchange.into(), route.into(), options, payload, properties);
        match tokio::time::timeout(CONFIRM_TIMEOUT, publish).await {
            Ok(sent) => Ok(sent?),
            Err(_) => Err(PublishError::Timeout(CONFIRM_TIMEOUT)),
        }
    }

    async fn confirmed(confirm: PublisherConfirm) -> Result<(), PublishError> {
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Err(_) => Err(PublishError::Timeout(CONFIRM_TIMEOUT)),
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

    /// Publishes several envelopes pipelined (all sent, then all confirms
    /// awaited together). One result per envelope, in order.
    pub async fn publish_all(&self, envelopes: &[Envelope]) -> Vec<Result<(), PublishError>> {
        let channel = match self.channel() {
            Ok(channel) => channel,
            Err(err) => return envelopes.iter().map(|_| Err(err.clone())).collect(),
        };
        let exchange = self.topology.exchange();
        let mut pending = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            let sent = Self::send(
                &channel,
                &exchange,
                ROUTE_DELIVER,
                &envelope.encode(),
                Some(envelope.id.to_string()),
            )
            .await;
            pending.push(async move { Self::confirmed(sent?).await });
        }
        let results = join_all(pending).await;
        if results
            .iter()
            .any(|r| matches!(r, Err(PublishError::Unroutable)))
        {
            // Someone deleted a queue or binding: put the topology back.
            warn!("a publish was unroutable; declaring the topology again");
            if let Ok(Err(err)) =
                tokio::time::timeout(CONFIRM_TIMEOUT, self.topology.declare(&channel)).await
            {
                warn!(error = %err, "could not declare the topology");
            }
        }
        results
    }

    /// Parks a payload no worker can read in `{p}.dead`, for a person to look at.
    pub async fn park_undecodable(&self, payload: &[u8]) -> Result<(), PublishError> {
        let channel = self.channel()?;
        let sent = Self::send(
            &channel,
            &self.topology.dead_letter_exchange(),
            ROUTE_UNDECODABLE,
            payload,
            None,
        )
        .await?;
        Self::confirmed(sent).await
    }
}
