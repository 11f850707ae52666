//! The delivery pipeline's SQL, shared by both kinds of work (messages and
//! status updates have the same pipeline columns; see the first migration).
//!
//! - publishing: rows are accepted as published by the API when it
//!   publishes them itself ([`Publishing`]), or claimed by the relay
//!   ([`claim_for_publish`], then [`mark_published`]); [`release_publish`]
//!   hands a failed publish to the relay; the guard [`claim_stale_published`] publishes again
//!   what stayed `queued` long after it was published; [`replay`] re-drives
//!   a row an operator took from the dead-letter queue;
//! - delivering: [`claim_messages`] / [`claim_status_updates`] (queued → sending,
//!   attempts + 1, with a lease), then [`record_many`] (outcomes and their
//!   attempts, many rows in one statement), or [`expire`] for a row claimed past its
//!   retry deadline (failed with no provider call, so no attempt);
//!   [`requeue_expired`] gives back rows whose worker died;
//! - reading the history: [`attempts_for`], scoped to an account;
//! - telling who waits: every statement that takes rows a request waits for
//!   to a final state ([`record_many`], [`expire`]) NOTIFYs [`DONE_CHANNEL`]
//!   naming them and their state ([`done_rows`] reads it back); [`state_of`]
//!   reads one row's state, for a waiter that may have missed its notification.
//!
//! `attempts` fences stale writers: an outcome is recorded only if the row is
//! still `sending` at the attempt the writer claimed, and a publish is marked
//! only if the row is still `queued` at the attempt that was published.
//!
//! One module per operation; this one only names them.

mod accept;
mod claim;
mod done;
mod publish;
mod read;
mod record;

pub use accept::{Accepted, Publishing};
pub(crate) use accept::{AcceptedRow, insert_accepted};
pub use claim::{
    ClaimedMessage, ClaimedStatusUpdate, claim_messages, claim_status_updates, release_claim,
    requeue_expired,
};
pub(crate) use done::notify_done;
pub use done::{DONE_CHANNEL, DONE_PER_NOTIFY, Done, done_rows, state_of};
pub use publish::{
    Publishable, RELAY_CHANNEL, Replayed, claim_for_publish, claim_stale_published, mark_published,
    notify_relays, release_publish, replay,
};
pub use read::{AttemptOutcome, AttemptRecord, BACKLOG_CAP, attempts_for, backlog};
pub use record::{Recorded, expire, record_many};
