//! kurir's RabbitMQ layer: the topology, a confirmed publisher, the consuming
//! subscription, the dead-letter queue, and the envelope that travels between them.
//!
//! The broker carries only small envelopes (`{kind, id, account_id}`); the
//! message itself lives in Postgres. So the broker may lose or duplicate an
//! envelope without losing a message: the relay republishes what was never
//! confirmed (and, after a while, what was confirmed but never consumed), and
//! the worker drops duplicates. kurir, not lapin, owns recovery: a lost
//! connection is replaced whole. No other crate speaks AMQP.

mod connection;
mod consumer;
pub mod dlq;
mod envelope;
mod migrate;
mod publisher;
mod report;
pub mod stats;
mod topology;

pub use connection::{BusError, STABLE_AFTER, connect_once, reconnect_schedule};
pub use consumer::{Delivery, QueueState, Subscription};
pub use envelope::{DecodeError, Envelope};
pub use migrate::Migration;
pub use publisher::{PublishError, Published, Publisher};
pub use report::{LinkState, report_broker};
pub use topology::Topology;
