//! Queue depths for `kurir stats`: passive declares of `{p}.deliveries` and
//! `{p}.dead-letters`, which create nothing and change nothing (a queue that does
//! not exist is reported as missing, not made).

use std::time::Duration;

use lapin::{Connection, options::QueueDeclareOptions, types::FieldTable};

use crate::{BusError, Topology, connection};

/// How long one step against the broker may take.
const STEP: Duration = Duration::from_secs(10);

/// One queue as the broker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub name: String,
    /// `None`: the queue does not exist (no kurir process declared it yet).
    pub found: Option<Depth>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Depth {
    /// Messages ready for a consumer; those delivered to a worker and not
    /// yet acked are not counted.
    pub ready: u32,
    pub consumers: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepths {
    pub deliveries: QueueDepth,
    pub dead: QueueDepth,
}

/// Connects once and asks for both queues' depths.
pub async fn queue_depths(url: &str, topology: &Topology) -> Result<QueueDepths, BusError> {
    let connection = connection::connect_once(url, "kurir-stats").await?;
    let result = async {
        Ok(QueueDepths {
            deliveries: depth(&connection, topology.deliveries()).await?,
            dead: depth(&connection, topology.dead()).await?,
        })
    }
    .await;
    connection::close(&connection, "done").await;
    result
}

/// One passive declare, on a channel of its own: the broker closes the
/// channel when the queue does not exist.
async fn depth(connection: &Connection, name: String) -> Result<QueueDepth, BusError> {
    let declare = async {
        let channel = connection.create_channel().await?;
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = channel
            .queue_declare(name.as_str().into(), options, FieldTable::default())
            .await;
        if declared.is_ok() {
            let _ = channel.close(200, "done".into()).await;
        }
        Ok::<_, BusError>(declared)
    };
    let declared = match tokio::time::timeout(STEP, declare).await {
        Ok(declared) => declared?,
        Err(_) => return Err(BusError::Timeout(STEP)),
    };
    match declared {
        Ok(queue) => Ok(QueueDepth {
            name,
            found: Some(Depth {
                ready: queue.message_count(),
                consumers: queue.consumer_count(),
            }),
        }),
        Err(err) if is_not_found(&err) => Ok(QueueDepth { name, found: None }),
        Err(err) => Err(err.into()),
    }
}

/// The broker's 404 NOT_FOUND, as a passive declare of a missing queue gets it.
fn is_not_found(err: &lapin::Error) -> bool {
    matches!(err.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
}
