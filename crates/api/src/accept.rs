//! Group commit of accepted work (docs/design.md, "The hot path is batched").
//! Each `POST /v1/users/{id}/messages` and `POST /v1/users/{id}/status`
//! hands its row here and waits for its own answer; one task gathers
//! whatever arrived meanwhile and stores it with one multi-row INSERT per
//! kind, then hands the stored rows to the dispatcher (see `dispatch` for who
//! publishes what). While one batch commits, the next one gathers. A row
//! whose user does not exist fails that request alone (404); a database that
//! is away fails the whole batch (503), never half of it.
//!
//! Rows sent with an idempotency key are stored in one transaction with
//! their keys' claims (`kurir_store::idempotency`): a row whose key is
//! already held is not stored, and its request gets the first response; two
//! rows of one batch with the same key are one row, the second a repeat of
//! the first. A batch without keys needs no transaction (one statement per
//! kind, as before).

use std::collections::HashMap;

use kurir_core::runtime::{Asked, Grouped, Tasks};
use kurir_store::{
    Db, StoreError,
    idempotency::{self as key_store, Claim, Key, Recorded, Scope},
    messages::{self, NewMessage},
    pipeline::{Accepted, Publishing},
    status_updates::{self, NewStatusUpdate},
};
use uuid::Uuid;

use crate::{
    dispatch::Dispatcher,
    error::ApiError,
    idempotency::{self, Kept},
};

/// Something a client asked kurir to deliver.
#[derive(Debug, Clone)]
pub enum NewJob {
    Message(NewMessage),
    StatusUpdate(NewStatusUpdate),
}

impl NewJob {
    pub fn id(&self) -> Uuid {
        match self {
            NewJob::Message(m) => m.id.0,
            NewJob::StatusUpdate(s) => s.id.0,
        }
    }
}

/// Most rows stored in one statement.
const BATCH: usize = 512;
/// Batches being committed at once: one. While it commits, the next batch
/// gathers, so batches grow with the load by themselves (measured: more in
/// flight meant smaller batches, more statements and more CPU per message).
const IN_FLIGHT: usize = 1;

/// One row to store, and the idempotency key it was sent with, if any.
#[derive(Debug, Clone)]
pub struct Accept {
    pub job: NewJob,
    pub key: Option<Claim>,
}

impl From<NewJob> for Accept {
    fn from(job: NewJob) -> Self {
        Self { job, key: None }
    }
}

/// How a row's request was answered by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// The row is stored (and its key, if it had one, keeps its response).
    /// `outside_window`: a text to a user whose 24-hour window is known to
    /// be closed.
    New { outside_window: bool },
    /// The key was taken by the same request: this is its first response;
    /// nothing was stored.
    Replay(Kept),
}

/// What a request learns about its row: stored, or why not.
pub type Answer = Result<Stored, ApiError>;

/// Cheap to clone; all clones feed one gatherer, which ends once every clone
/// is dropped (after the server has answered its last request), so requests
/// still being served at shutdown get their answers. The commit and the
/// hand-over to the dispatcher run on the gatherer's own tasks: a client
/// that hangs up after handing its row in cannot split them.
#[derive(Debug, Clone)]
pub struct Accepter {
    group: Grouped<Accept, Answer>,
}

impl Accepter {
    /// Starts the gatherer on `tasks`.
    pub fn start(db: Db, dispatcher: Dispatcher, tasks: &Tasks) -> Self {
        let batches = Batches { db, dispatcher };
        let group = Grouped::start(BATCH, IN_FLIGHT, tasks, move |group| {
            let batches = batches.clone();
            async move { batches.commit(group).await }
        });
        Self { group }
    }

    /// Stores many rows (a batch request's), grouped with each other and
    /// with whatever else is being accepted now: multi-row statements of up
    /// to the batch size, never one INSERT per row. One answer per row, in order.
    pub async fn accept_many(&self, rows: Vec<Accept>) -> Vec<Answer> {
        futures_util::future::join_all(rows.into_iter().map(|row| self.accept(row))).await
    }

    /// Stores one row with whatever else is being accepted now; `Ok` once
    /// it is committed (then it is handed to the dispatcher too).
    pub async fn accept(&self, row: impl Into<Accept>) -> Answer {
        self.group
            .ask(row.into(), || {
                Err(ApiError::unavailable(
                    "the server is shutting down; try again",
                ))
            })
            .await
    }
}

/// The answer for a row the group stored (handed to the dispatcher), or
/// for one it did not: its user does not exist.
fn stored_new(slots: &mut crate::dispatch::Slots<'_>, stored: Option<Accepted>) -> Answer {
    match stored {
        Some(accepted) => {
            metrics::counter!("kurir_accepted_total", "kind" => accepted.row.kind.as_str())
                .increment(1);
            slots.submit(accepted.row);
            Ok(Stored::New {
                outside_window: accepted.outside_window,
            })
        }
        None => Err(ApiError::not_found("user")),
    }
}

#[derive(Clone)]
struct Batches {
    db: Db,
    dispatcher: Dispatcher,
}

/// What a row of a group is to its key.
#[derive(Debug, Clone, Copy)]
enum Role {
    /// No key.
    Free,
    /// The first row of the group with its key: it claims the key.
    Claimer,
    /// A later row with the key of the row at this position: it shares
    /// that row's fate (the same request sent twice at once).
    Follower(usize),
}

/// The field a key came in, for its errors.
fn key_field(scope: Scope) -> &'static str {
    match scope {
        Scope::Request => idempotency::HEADER,
        Scope::Item | Scope::BatchItem => "idempotency_key",
    }
}

/// Stores `jobs` with one multi-row INSERT per kind; what was stored, by id.
async fn store_jobs<'a>(
    client: &impl kurir_store::GenericClient,
    jobs: impl Iterator<Item = &'a NewJob>,
    publishing: Publishing,
) -> Result<HashMap<Uuid, Accepted>, StoreError> {
    let mut new_messages = Vec::new();
    let mut new_updates = Vec::new();
    for job in jobs {
        match job {
            NewJob::Message(m) => new_messages.push(m.clone()),
            NewJob::StatusUpdate(s) => new_updates.push(s.clone()),
        }
    }
    let mut stored = messages::insert_many(client, &new_messages, publishing).await?;
    stored.extend(status_updates::insert_many(client, &new_updates, publishing).await?);
    Ok(stored.into_iter().map(|row| (row.row.id, row)).collect())
}

/// What the store said about a group with keys: the stored rows, whether
/// each claim held, and what each key that did not hold keeps.
type Outcome = (HashMap<Uuid, Accepted>, Vec<bool>, Vec<Option<Recorded>>);

impl Batches {
    async fn commit(&self, batch: Vec<Asked<Accept, Answer>>) {
        let mut claimer_of: HashMap<&Key, usize> = HashMap::new();
        let mut roles = Vec::with_capacity(batch.len());
        let mut claims = Vec::new();
        for (position, (row, _)) in batch.iter().enumerate() {
            let role = match &row.key {
                None => Role::Free,
                Some(claim) => match claimer_of.get(&claim.key) {
                    Some(first) => Role::Follower(*first),
                    None => {
                        claimer_of.insert(&claim.key, position);
                        claims.push(claim.clone());
                        Role::Claimer
                    }
                },
            };
            roles.push(role);
        }
        let mut slots = self.dispatcher.reserve(batch.len());
        let publishing = slots.publishing();
        let outcome: Result<Outcome, StoreError> = if claims.is_empty() {
            self.db
                .run(async |client| {
                    let stored =
                        store_jobs(client, batch.iter().map(|(row, _)| &row.job), publishing)
                            .await?;
                    Ok((stored, Vec::new(), Vec::new()))
                })
                .await
        } else {
            // The keys and the rows they answer for, in one transaction: a
            // key exists exactly when its row does.
            self.db
                .transaction(async |tx: &kurir_store::Transaction<'_>| {
                    let held = key_store::claim_many(tx, &claims).await?;
                    let mut held_by = held.iter();
                    let storing: Vec<bool> = roles
                        .iter()
                        .map(|role| match role {
                            Role::Free => true,
                            Role::Claimer => *held_by.next().unwrap_or(&false),
                            Role::Follower(_) => false,
                        })
                        .collect();
                    let jobs = batch
                        .iter()
                        .zip(&storing)
                        .filter(|(_, store)| **store)
                        .map(|((row, _), _)| &row.job);
                    let stored = store_jobs(tx, jobs, publishing).await?;
                    let mut orphans = Vec::new();
                    let mut taken = Vec::new();
                    let claimers = batch
                        .iter()
                        .zip(&roles)
                        .filter(|(_, r)| matches!(r, Role::Claimer));
                    for (((row, _), _), held) in claimers.zip(&held) {
                        let Some(claim) = &row.key else { continue };
                        if !held {
                            taken.push(claim.key.clone());
                        } else if !stored.contains_key(&row.job.id()) {
                            orphans.push(claim.key.clone());
                        }
                    }
                    key_store::forget_many(tx, &orphans).await?;
                    let recorded = key_store::lookup_many(tx, &taken).await?;
                    Ok((stored, held, recorded))
                })
                .await
        };
        let (mut stored, held, recorded) = match outcome {
            Ok(outcome) => outcome,
            Err(err) => {
                let error = ApiError::from(err);
                for (_, answer) in batch {
                    let _ = answer.send(Err(error.clone()));
                }
                return;
            }
        };
        let mut held = held.into_iter();
        let mut recorded = recorded.into_iter();
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        for ((row, _), role) in batch.iter().zip(&roles) {
            let answer = match (role, &row.key) {
                (Role::Free, _) | (Role::Claimer, None) => {
                    stored_new(&mut slots, stored.remove(&row.job.id()))
                }
                (Role::Claimer, Some(claim)) => {
                    if held.next().unwrap_or(false) {
                        stored_new(&mut slots, stored.remove(&row.job.id()))
                    } else {
                        match recorded.next().flatten() {
                            Some(first) => idempotency::replay(
                                key_field(claim.key.scope),
                                first,
                                &claim.fingerprint,
                            )
                            .map(Stored::Replay),
                            // Taken, yet gone: the first request's row was
                            // not stored after all; this one may try again.
                            None => Err(ApiError::conflict(
                                key_field(claim.key.scope),
                                "a request with this key was being processed; send it again",
                            )),
                        }
                    }
                }
                (Role::Follower(first), claim) => {
                    let (first_row, _) = &batch[*first];
                    let same = match (claim, &first_row.key) {
                        (Some(mine), Some(theirs)) => mine.fingerprint == theirs.fingerprint,
                        _ => false,
                    };
                    match (same, &answers[*first], &first_row.key) {
                        (false, _, _) => Err(ApiError::field(
                            claim
                                .as_ref()
                                .map_or("idempotency_key", |c| key_field(c.key.scope)),
                            "was used with a different request in the last 24 hours; send a new key for a new request",
                        )),
                        (true, Ok(Stored::New { .. }), Some(theirs)) => {
                            Ok(Stored::Replay(theirs.response.clone()))
                        }
                        (true, answer, _) => answer.clone(),
                    }
                }
            };
            answers.push(answer);
        }
        for ((_, answer), answered) in batch.into_iter().zip(answers) {
            // A request that gave up meanwhile: its row is stored and published all the same.
            let _ = answer.send(answered);
        }
    }
}
