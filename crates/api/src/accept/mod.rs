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

mod plan;

use plan::Verdict;

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

/// What the store said about a group: the stored rows, whether each claim
/// held, and what each key that did not hold keeps.
type Outcome = (HashMap<Uuid, Accepted>, Vec<bool>, Vec<Option<Recorded>>);

impl Batches {
    /// Carries out the group's plan (`plan`): claims, stores, settles the
    /// keys, then answers each request.
    async fn commit(&self, batch: Vec<Asked<Accept, Answer>>) {
        let roles = plan::roles(
            batch
                .iter()
                .map(|(row, _)| row.key.as_ref().map(|c| &c.key)),
        );
        let claimers = plan::claimers(&roles);
        let claim_of = |position: usize| batch[position].0.key.as_ref();
        let claims: Vec<Claim> = claimers
            .iter()
            .filter_map(|position| claim_of(*position).cloned())
            .collect();
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
                    let storing = plan::storing(&roles, &held);
                    let jobs = batch
                        .iter()
                        .zip(&storing)
                        .filter(|(_, store)| **store)
                        .map(|((row, _), _)| &row.job);
                    let stored = store_jobs(tx, jobs, publishing).await?;
                    let stored_at: Vec<bool> = batch
                        .iter()
                        .map(|(row, _)| stored.contains_key(&row.job.id()))
                        .collect();
                    let after = plan::keys_after(&roles, &held, &stored_at);
                    let keys = |positions: &[usize]| -> Vec<Key> {
                        positions
                            .iter()
                            .filter_map(|position| claim_of(*position).map(|c| c.key.clone()))
                            .collect()
                    };
                    key_store::forget_many(tx, &keys(&after.forget)).await?;
                    let recorded = key_store::lookup_many(tx, &keys(&after.look_up)).await?;
                    Ok((stored, held, recorded))
                })
                .await
        };
        let (mut stored, held, mut recorded) = match outcome {
            Ok(outcome) => outcome,
            Err(err) => {
                let error = ApiError::from(err);
                for (_, answer) in batch {
                    let _ = answer.send(Err(error.clone()));
                }
                return;
            }
        };
        let fingerprint = |position: usize| claim_of(position).map(|c| &c.fingerprint);
        let verdicts = plan::verdicts(&roles, &held, |me, first| {
            fingerprint(me).is_some() && fingerprint(me) == fingerprint(first)
        });
        let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
        for ((row, _), verdict) in batch.iter().zip(verdicts) {
            let field = || {
                row.key
                    .as_ref()
                    .map_or("idempotency_key", |c| key_field(c.key.scope))
            };
            let answer = match verdict {
                Verdict::Inserted => stored_new(&mut slots, stored.remove(&row.job.id())),
                Verdict::Replay(n) => {
                    match (recorded.get_mut(n).and_then(Option::take), &row.key) {
                        (Some(first), Some(claim)) => {
                            idempotency::replay(field(), first, &claim.fingerprint)
                                .map(Stored::Replay)
                        }
                        // Taken, yet gone: the first request's row was not
                        // stored after all; this one may try again.
                        _ => Err(ApiError::conflict(
                            field(),
                            "a request with this key was being processed; send it again",
                        )),
                    }
                }
                Verdict::SameAs(first) => match (&answers[first], claim_of(first)) {
                    (Ok(Stored::New { .. }), Some(theirs)) => {
                        Ok(Stored::Replay(theirs.response.clone()))
                    }
                    (answer, _) => answer.clone(),
                },
                Verdict::Different(_) => Err(ApiError::field(
                    field(),
                    "was used with a different request in the last 24 hours; send a new key for a new request",
                )),
            };
            answers.push(answer);
        }
        for ((_, answer), answered) in batch.into_iter().zip(answers) {
            // A request that gave up meanwhile: its row is stored and published all the same.
            let _ = answer.send(answered);
        }
    }
}
