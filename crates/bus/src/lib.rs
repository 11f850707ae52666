//! kurir's RabbitMQ layer: the topology, a confirmed publisher, a consumer with
//! manual acks, and the envelope that travels between them.
//!
//! The broker carries only small envelopes (`{kind, id, account_id}`); the
//! message itself lives in Postgres. So the broker may lose or duplicate an
//! envelope without losing a message: the relay republishes what was never
//! confirmed, and the worker drops duplicates. No other crate speaks AMQP.

mod connection;
mod consumer;
mod envelope;
mod publisher;
mod topology;

pub use connection::{BusError, connect};
pub use consumer::{Consumer, Delivery};
pub use envelope::{DecodeError, Envelope};
pub use publisher::{PublishError, Publisher};
pub use topology::Topology;
