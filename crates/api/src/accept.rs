//! Group commit of accepted messages (DESIGN.md, "The hot path is batched").
//! Each `POST /v1/users/{id}/messages` hands its row here and waits for its
//! own answer; one task gathers whatever arrived meanwhile and stores it with
//! one multi-row INSERT, one commit, then hands the stored rows to the
//! dispatcher (see `dispatch` for who publishes what). A few batches may be in flight at once,
//! so a slow commit does not stop the next batch from forming. A message
//! whose user does not exist fails that request alone (404); a database that
//! is away fails the whole batch (503), never half of it.

use std::collections::HashMap;

use kurir_core::runtime::{Asked, Grouped, Tasks};
use kurir_store::{
    Db,
    messages::{self, NewMessage},
};

use crate::{dispatch::Dispatcher, error::ApiError};

/// Most messages stored in one statement.
const BATCH: usize = 512;
/// Batches being committed at once.
const IN_FLIGHT: usize = 4;

/// What a request learns about its message: stored, or why not.
type Answer = Result<(), ApiError>;

/// Cheap to clone; all clones feed one gatherer, which ends once every clone
/// is dropped (after the server has answered its last request), so requests
/// still being served at shutdown get their answers.
#[derive(Debug, Clone)]
pub struct Accepter {
    group: Grouped<NewMessage, Answer>,
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

    /// Stores one message with whatever else is being accepted now; `Ok`
    /// once it is committed (then it is handed to the dispatcher too).
    pub async fn accept(&self, message: NewMessage) -> Answer {
        self.group
            .ask(message, || {
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
    async fn commit(&self, batch: Vec<Asked<NewMessage, Answer>>) {
        let rows: Vec<NewMessage> = batch.iter().map(|(message, _)| message.clone()).collect();
        let mut slots = self.dispatcher.reserve(rows.len());
        let stored = self
            .db
            .run(async |client| messages::insert_many(client, &rows, slots.publishing()).await)
            .await;
        let mut stored: HashMap<_, _> = match stored {
            Ok(stored) => stored.into_iter().map(|row| (row.id, row)).collect(),
            Err(err) => {
                let error = ApiError::from(err);
                for (_, answer) in batch {
                    let _ = answer.send(Err(error.clone()));
                }
                return;
            }
        };
        for (message, answer) in batch {
            let answered = match stored.remove(&message.id.0) {
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
