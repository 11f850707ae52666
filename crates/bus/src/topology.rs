//! Exchanges and queues, all named under `KURIR_QUEUE_PREFIX`:
//!
//! ```text
//! {p}            direct ──"deliver"──▶ {p}.deliveries  quorum, x-delivery-limit,
//!                                                       dead-letters to {p}.dlx
//! {p}.dlx        direct ──"deliver"──────▶ {p}.dead-letters   envelopes the broker gave up on,
//!                       ──"undecodable"──▶ {p}.dead-letters   and those no worker could read
//! ```
//! Workers consume `{p}.deliveries`. `{p}.dead-letters` is for operators
//! (`kurir dlq list|replay`); nothing is lost while an envelope sits there,
//! since its row is still `queued` in Postgres and the relay's guard
//! publishes it again after `KURIR_REPUBLISH_AFTER`. Only plain AMQP 0-9-1
//! and quorum-queue arguments that RabbitMQ 3.10 and 4.x both accept, with
//! the same meaning, are used.
//!
//! **Reading a dead letter never ages it.** Reading a quorum queue's message
//! and handing it back counts as a delivery on RabbitMQ 3.10 through 4.2
//! (4.3 stops counting an explicit `basic.nack` with requeue, but still
//! counts a closed channel). RabbitMQ 4.0 gives every quorum queue declared
//! without `x-delivery-limit` a limit of 20 and drops (or dead-letters) a
//! message past it, so an operator listing the queue 21 times lost what was
//! in it. `-1` means "no limit" on 4.x but "drop at the first return" on
//! 3.x, so the dead-letter queue names a limit that means the same on both
//! and that no amount of reading reaches: [`DEAD_LETTER_DELIVERY_LIMIT`].
//! A queue's arguments cannot change once declared, so this queue has a new
//! name; the old `{p}.dead` (no limit argument) is drained into it and
//! deleted by [`Topology::migrate_legacy_dead`].

use lapin::{
    Channel, ExchangeKind,
    options::{
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};

/// After this many deliveries of one envelope (each ended by a worker dying
/// or a connection closing before its ack) the broker dead-letters it to `{p}.dead-letters`.
pub const DELIVERY_LIMIT: i64 = 20;

/// The dead-letter queue's delivery limit: the largest value every RabbitMQ
/// version reads as a plain number (one `kurir dlq list` a second would take
/// 68 years to reach it). See the module comment for why not `-1`.
pub const DEAD_LETTER_DELIVERY_LIMIT: i64 = i32::MAX as i64;

pub const ROUTE_DELIVER: &str = "deliver";
pub const ROUTE_UNDECODABLE: &str = "undecodable";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn exchange(&self) -> String {
        self.prefix.clone()
    }

    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    pub fn deliveries(&self) -> String {
        format!("{}.deliveries", self.prefix)
    }

    /// The dead-letter queue, for operators.
    pub fn dead(&self) -> String {
        format!("{}.dead-letters", self.prefix)
    }

    /// The dead-letter queue as kurir declared it until it was renamed
    /// (quorum, no delivery limit): see [`Topology::migrate_legacy_dead`].
    pub fn legacy_dead(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    fn quorum(dead_letter_exchange: Option<String>) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        if dead_letter_exchange.is_none() {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DEAD_LETTER_DELIVERY_LIMIT),
            );
        }
        if let Some(exchange) = dead_letter_exchange {
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(exchange.as_str().into()),
            );
            // Dead-letter at least once, not at most once (quorum queues, 3.10+).
            args.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
        }
        args
    }

    /// Declares everything (idempotent); each new connection does it again.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let queue = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .exchange_declare(
                self.exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
        let bindings = [
            (
                self.deliveries(),
                self.exchange(),
                ROUTE_DELIVER,
                Some(self.dead_letter_exchange()),
            ),
            (
                self.dead(),
                self.dead_letter_exchange(),
                ROUTE_DELIVER,
                None,
            ),
            (
                self.dead(),
                self.dead_letter_exchange(),
                ROUTE_UNDECODABLE,
                None,
            ),
        ];
        // Before dead letters went to `{p}.dead` (now `{p}.dead-letters`), kurir kept a `{p}.redeliver`
        // queue bound for them: an old one would go on filling up unread.
        // (Deleting a queue that does not exist is fine.)
        channel
            .queue_delete(
                format!("{}.redeliver", self.prefix).into(),
                QueueDeleteOptions::default(),
            )
            .await?;
        for (name, exchange, route, dlx) in bindings {
            channel
                .queue_declare(name.as_str().into(), queue, Self::quorum(dlx))
                .await?;
            channel
                .queue_bind(
                    name.as_str().into(),
                    exchange.into(),
                    route.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Deletes everything (tests clean up after themselves with this).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for queue in [self.deliveries(), self.dead(), self.legacy_dead()] {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [self.exchange(), self.dead_letter_exchange()] {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }
}
