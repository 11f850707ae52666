//! End-to-end tests: the real API, worker, Postgres and RabbitMQ, with the
//! sandbox standing in for WhatsApp. Each test owns its database and queue
//! prefix (see `support`), so they run in parallel.
#![allow(clippy::unwrap_used)]

mod auth;
mod dead_letters;
mod delivery;
mod faults;
mod idempotency;
mod import;
mod isolation;
mod limits;
mod nodes;
mod observability;
mod operations;
mod pipeline;
mod process;
mod proxy;
mod receipts;
mod recovery;
mod restarts;
mod seed;
mod slow_clients;
mod stats;
mod support;
mod templates;
mod users;
mod validation;
mod wait;
