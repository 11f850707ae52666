//! Moves the letters of the dead-letter queue kurir declared before
//! `{p}.dead-letters`, the old `{p}.dead`, into the new one and deletes it.
//! The old queue has no `x-delivery-limit`, so RabbitMQ 4 limits it to 20
//! deliveries and every `kurir dlq list` aged its letters (the topology
//! module says why the new queue does not). Arguments cannot be changed on
//! a declared queue, hence a move.
//!
//! Every process that connects runs this once per prefix, so it happens the
//! first time an upgraded kurir meets the broker. The move is safe to run
//! from several processes at once and to interrupt:
//! - the old queue is unbound first, so new dead letters only reach the new one;
//! - one mover at a time: it holds an *exclusive* consumer on the old queue,
//!   and anyone else's attempt is refused and skipped;
//! - each letter is published to the new queue and confirmed by the broker
//!   before it is acked on the old one (so an interruption can copy a letter
//!   twice, never lose one);
//! - the old queue is deleted only once the broker says it holds no ready
//!   letter and the mover holds none unacked.
//!
//! A letter keeps its properties and headers. The broker's `x-death` record
//! travels as a plain header; the reason, death count and first death are
//! also written in kurir's own headers, which `kurir dlq list` reads when
//! `x-death` is missing.

use std::{
    collections::HashSet,
    sync::Mutex,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ErrorKind,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions,
        BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable},
};
use tracing::{info, warn};

use crate::{
    BusError, Topology,
    dlq::{DEATHS_HEADER, death_of},
    publisher::{PARKED_AT_HEADER, REASON_HEADER},
    topology::{ROUTE_DELIVER, ROUTE_UNDECODABLE},
};

/// How long one step against the broker may take.
const STEP: Duration = Duration::from_secs(10);
/// How long the mover waits for a next letter before it asks the broker
/// whether the old queue is empty.
const IDLE: Duration = Duration::from_millis(300);
/// How long one process spends moving at most; what is left is moved by
/// the next connect (each letter moved is already safe in the new queue).
const MOST: Duration = Duration::from_secs(60);
/// Letters in flight to the mover at once.
const PREFETCH: u16 = 64;

/// Prefixes whose old queue this process found gone (or removed): it asks
/// the broker once per prefix, since a passive declare of a missing queue is
/// a channel error the broker logs.
static DONE: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn done(prefix: &str) -> bool {
    DONE.lock()
        .map(|set| set.as_ref().is_some_and(|set| set.contains(prefix)))
        .unwrap_or(false)
}

fn mark_done(prefix: &str) {
    if let Ok(mut set) = DONE.lock() {
        set.get_or_insert_with(HashSet::new)
            .insert(prefix.to_owned());
    }
}

/// What [`Topology::migrate_legacy_dead`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migration {
    /// There is no old queue (or this process already saw it gone).
    NothingToDo,
    /// Another process is moving the letters now.
    Elsewhere,
    /// This process moved this many letters and deleted the old queue.
    Moved(u64),
    /// This process moved this many letters and ran out of time; the rest
    /// move at the next connect.
    Partly(u64),
}

fn soft_error(err: &lapin::Error) -> Option<&AMQPSoftError> {
    match err.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Soft(soft) => Some(soft),
            AMQPErrorKind::Hard(_) => None,
        },
        _ => None,
    }
}

async fn step<T>(what: impl std::future::Future<Output = lapin::Result<T>>) -> Result<T, BusError> {
    match tokio::time::timeout(STEP, what).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(BusError::Timeout(STEP)),
    }
}

impl Topology {
    /// Moves what the old dead-letter queue `{p}.dead` holds into
    /// [`Topology::dead`] and deletes it (see this module's comment). Call it
    /// after [`Topology::declare`], on a connection of the caller's: it opens
    /// and closes channels of its own.
    pub async fn migrate_legacy_dead(
        &self,
        connection: &Connection,
    ) -> Result<Migration, BusError> {
        if done(&self.prefix) {
            return Ok(Migration::NothingToDo);
        }
        let legacy = self.legacy_dead();
        let probe = step(connection.create_channel()).await?;
        let passive = QueueDeclareOptions {
            passive: true,
            durable: true,
            ..QueueDeclareOptions::default()
        };
        match step(probe.queue_declare(legacy.as_str().into(), passive, FieldTable::default()))
            .await
        {
            Ok(_) => {}
            Err(BusError::Amqp(err)) if soft_error(&err) == Some(&AMQPSoftError::NOTFOUND) => {
                // The broker closed `probe` for us.
                mark_done(&self.prefix);
                return Ok(Migration::NothingToDo);
            }
            Err(err) => return Err(err),
        }
        // From here on, new dead letters reach only the new queue.
        for route in [ROUTE_DELIVER, ROUTE_UNDECODABLE] {
            step(probe.queue_unbind(
                legacy.as_str().into(),
                self.dead_letter_exchange().into(),
                route.into(),
                FieldTable::default(),
            ))
            .await?;
        }
        let mover = step(connection.create_channel()).await?;
        let outcome = self.move_letters(&probe, &mover).await;
        let _ = tokio::time::timeout(STEP, mover.close(200, "moved".into())).await;
        let _ = tokio::time::timeout(STEP, probe.close(200, "moved".into())).await;
        match &outcome {
            Ok(Migration::Moved(moved)) => {
                mark_done(&self.prefix);
                info!(queue = %legacy, into = %self.dead(), moved, "moved the old dead-letter queue's letters and deleted it");
            }
            Ok(Migration::Partly(moved)) => {
                warn!(queue = %legacy, into = %self.dead(), moved, "moved part of the old dead-letter queue's letters; the rest move at the next connect");
            }
            Ok(Migration::Elsewhere | Migration::NothingToDo) => {}
            Err(err) => {
                warn!(queue = %legacy, error = %err, "could not move the old dead-letter queue's letters (nothing is lost; tried again at the next connect)");
            }
        }
        outcome
    }

    async fn move_letters(&self, probe: &Channel, mover: &Channel) -> Result<Migration, BusError> {
        let legacy = self.legacy_dead();
        let into = self.dead();
        step(mover.confirm_select(ConfirmSelectOptions::default())).await?;
        step(mover.basic_qos(PREFETCH, BasicQosOptions::default())).await?;
        let exclusive = BasicConsumeOptions {
            exclusive: true,
            ..BasicConsumeOptions::default()
        };
        let tag = "kurir-move-dead-letters";
        let mut letters = match step(mover.basic_consume(
            legacy.as_str().into(),
            tag.into(),
            exclusive,
            FieldTable::default(),
        ))
        .await
        {
            Ok(consumer) => consumer,
            Err(BusError::Amqp(err))
                if matches!(
                    soft_error(&err),
                    Some(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::RESOURCELOCKED)
                ) =>
            {
                return Ok(Migration::Elsewhere);
            }
            Err(err) => return Err(err),
        };
        let passive = QueueDeclareOptions {
            passive: true,
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let started = Instant::now();
        let mut moved = 0u64;
        loop {
            if started.elapsed() > MOST {
                return Ok(Migration::Partly(moved));
            }
            match tokio::time::timeout(IDLE, letters.next()).await {
                Ok(Some(delivery)) => {
                    let delivery = delivery?;
                    Self::copy(mover, &into, &delivery.properties, &delivery.data).await?;
                    step(delivery.acker.ack(BasicAckOptions::default())).await?;
                    moved += 1;
                }
                Ok(None) => {
                    return Err(BusError::Move(format!(
                        "the broker ended the move out of {legacy}"
                    )));
                }
                Err(_idle) => {
                    let queue = step(probe.queue_declare(
                        legacy.as_str().into(),
                        passive,
                        FieldTable::default(),
                    ))
                    .await?;
                    if queue.message_count() == 0 {
                        break;
                    }
                }
            }
        }
        // No more letters come once cancelled; those already sent to us
        // are still in the stream, and move like the rest.
        step(mover.basic_cancel(tag.into(), BasicCancelOptions::default())).await?;
        while let Ok(Some(delivery)) = tokio::time::timeout(IDLE, letters.next()).await {
            let delivery = delivery?;
            Self::copy(mover, &into, &delivery.properties, &delivery.data).await?;
            step(delivery.acker.ack(BasicAckOptions::default())).await?;
            moved += 1;
        }
        step(probe.queue_delete(legacy.as_str().into(), QueueDeleteOptions::default())).await?;
        Ok(Migration::Moved(moved))
    }

    /// Publishes one letter into `queue` and waits for the broker's confirm.
    async fn copy(
        channel: &Channel,
        queue: &str,
        properties: &BasicProperties,
        data: &[u8],
    ) -> Result<(), BusError> {
        let (reason, deaths, first_death) = death_of(properties);
        let mut headers = properties.headers().clone().unwrap_or_default();
        let has = |headers: &FieldTable, name: &str| {
            headers.inner().iter().any(|(key, _)| key.as_str() == name)
        };
        if !has(&headers, REASON_HEADER) {
            headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
        }
        if !has(&headers, DEATHS_HEADER) {
            headers.insert(DEATHS_HEADER.into(), AMQPValue::LongLongInt(deaths));
        }
        if !has(&headers, PARKED_AT_HEADER)
            && let Some(first) = first_death
        {
            headers.insert(
                PARKED_AT_HEADER.into(),
                AMQPValue::LongLongInt(first.saturating_mul(1000)),
            );
        }
        let properties = properties.clone().with_headers(headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm =
            step(channel.basic_publish("".into(), queue.into(), options, data, properties)).await?;
        match step(confirm).await? {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BusError::Move(format!(
                "{queue} does not exist: cannot move dead letters into it"
            ))),
            Confirmation::Nack(_) => Err(BusError::Move(format!(
                "the broker refused a dead letter moved into {queue}"
            ))),
            Confirmation::NotRequested => Err(BusError::Move(
                "the mover's channel lost confirm mode".into(),
            )),
        }
    }
}
