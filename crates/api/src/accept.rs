//! Group commit of accepted work (DESIGN.md, "The hot path is batched").
//! Each `POST /v1/users/{id}/messages` and `POST /v1/users/{id}/status`
//! hands its row here and waits for its own answer; one task gathers
//! whatever arrived meanwhile and stores it with one multi-row INSERT per
//! kind, then hands the stored rows to the dispatcher (see `dispatch` for who
//! publishes what). While one batch commits, the next one gathers. A row
//! whose user does not exist fails that request alone (404); a database that
//! is away fails the whole batch (503), never half of it.

use std::collections::HashMap;

use kurir_core::runtime::{Asked, Grouped, Tasks};
use kurir_store::{
    Db, StoreError,
    messages::{self, NewMessage},
    pipeline::Publishable,
    status_updates::{self, NewStatusUpdate},
};
use uuid::Uuid;

use crate::{dispatch::Dispatcher, error::ApiError};

/// Something a client asked kurir to deliver.
#[derive(Debug, Clone)]
pub enum NewJob {
    Message(NewMessage),
    StatusUpdate(NewStatusUpdate),
}

impl NewJob {
    fn id(&self) -> Uuid {
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

/// What a request learns about its row: stored, or why not.
type Answer = Result<(), ApiError>;

/// Cheap to clone; all clones feed one gatherer, which ends once every clone
/// is dropped (after the server has answered its last request), so requests
/// still being served at shutdown get their answers. The commit and the
/// hand-over to the dispatcher run on the gatherer's own tasks: a client
/// that hangs up after handing its row in cannot split them.
#[derive(Debug, Clone)]
pub struct Accepter {
    group: Grouped<NewJob, Answer>,
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
    pub async fn accept_many(&self, jobs: Vec<NewJob>) -> Vec<Answer> {
        futures_util::future::join_all(jobs.into_iter().map(|job| self.accept(job))).await
    }

    /// Stores one row with whatever else is being accepted now; `Ok` once
    /// it is committed (then it is handed to the dispatcher too).
    pub async fn accept(&self, job: NewJob) -> Answer {
        self.group
            .ask(job, || {
                Err(ApiError::unavailable(
                    "the server is shutting down; try again",
                ))
            })
            .await
    }
}

#[derive(Clone)]
struct Batches {
    db: Db,
    dispatcher: Dispatcher,
}

impl Batches {
    async fn commit(&self, batch: Vec<Asked<NewJob, Answer>>) {
        let mut new_messages = Vec::new();
        let mut new_updates = Vec::new();
        for (job, _) in &batch {
            match job {
                NewJob::Message(m) => new_messages.push(m.clone()),
                NewJob::StatusUpdate(s) => new_updates.push(s.clone()),
            }
        }
        let mut slots = self.dispatcher.reserve(batch.len());
        let publishing = slots.publishing();
        let stored = self
            .db
            .run(async |client| {
                let mut stored = messages::insert_many(client, &new_messages, publishing).await?;
                stored.extend(status_updates::insert_many(client, &new_updates, publishing).await?);
                Ok::<_, StoreError>(stored)
            })
            .await;
        let mut stored: HashMap<Uuid, Publishable> = match stored {
            Ok(stored) => stored.into_iter().map(|row| (row.id, row)).collect(),
            Err(err) => {
                let error = ApiError::from(err);
                for (_, answer) in batch {
                    let _ = answer.send(Err(error.clone()));
                }
                return;
            }
        };
        for (job, answer) in batch {
            let answered = match stored.remove(&job.id()) {
                Some(row) => {
                    slots.submit(row);
                    Ok(())
                }
                None => Err(ApiError::not_found("user")),
            };
            // A request that gave up meanwhile: its row is stored and published all the same.
            let _ = answer.send(answered);
        }
    }
}
