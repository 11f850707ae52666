//! Group commit of accepted messages (DESIGN.md, "The hot path is batched").
//! Each `POST /v1/users/{id}/messages` hands its row here and waits for its
//! own answer; one task gathers whatever arrived meanwhile and stores it with
//! one multi-row INSERT, one commit. A few batches may be in flight at once,
//! so a slow commit does not stop the next batch from forming. A message
//! whose user does not exist fails that request alone (404); a database that
//! is away fails the whole batch (503), never half of it.

use std::{sync::Arc, time::Duration};

use kurir_core::{JobKind, MessageId, runtime::Tasks};
use kurir_store::{
    PgPool,
    messages::{self, NewMessage},
    pipeline::Publishable,
    timed,
};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{dispatch::Dispatcher, error::ApiError};

/// Most messages stored in one statement.
const BATCH: usize = 512;
/// Batches being committed at once.
const IN_FLIGHT: usize = 4;
/// Requests waiting for a batch; past it a request waits for room.
const QUEUE: usize = 8192;

/// What a request learns about its message: stored, or why not.
type Answer = Result<(), ApiError>;

struct Pending {
    message: NewMessage,
    answer: oneshot::Sender<Answer>,
}

/// Cheap to clone; all clones feed one gatherer.
#[derive(Debug, Clone)]
pub struct Accepter {
    tx: mpsc::Sender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("id", &self.message.id)
            .finish()
    }
}

impl Accepter {
    /// Starts the gatherer on `tasks`. It ends once every clone is dropped
    /// (after the server has answered its last request), so requests still
    /// being served at shutdown get their answers.
    pub fn start(
        pool: PgPool,
        dispatcher: Dispatcher,
        db_timeout: Duration,
        publish_lease: Duration,
        tasks: &Tasks,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let batches = Batches {
            pool,
            dispatcher,
            db_timeout,
            publish_lease,
            tasks: tasks.clone(),
        };
        tasks.spawn(gather(rx, batches));
        Self { tx }
    }

    /// Stores one message with whatever else is being accepted now; `Ok`
    /// once it is committed (then it is handed to the dispatcher too).
    pub async fn accept(&self, message: NewMessage) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.tx
            .send(Pending { message, answer })
            .await
            .map_err(|_| ApiError::unavailable("the server is shutting down; try again"))?;
        answered.await.unwrap_or_else(|_| {
            Err(ApiError::unavailable(
                "the server is shutting down; try again",
            ))
        })
    }
}

#[derive(Clone)]
struct Batches {
    pool: PgPool,
    dispatcher: Dispatcher,
    db_timeout: Duration,
    publish_lease: Duration,
    tasks: Tasks,
}

async fn gather(mut rx: mpsc::Receiver<Pending>, batches: Batches) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // Wait for room first: while every slot commits, requests gather.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(BATCH);
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let batches = batches.clone();
        batches.tasks.clone().spawn(async move {
            batches.commit(batch).await;
            drop(permit);
        });
    }
}

impl Batches {
    async fn commit(&self, batch: Vec<Pending>) {
        let rows: Vec<NewMessage> = batch.iter().map(|p| p.message.clone()).collect();
        let stored = timed(self.db_timeout, async {
            let client = self.pool.get().await?;
            messages::insert_many(&client, &rows, self.publish_lease).await
        })
        .await;
        let stored: std::collections::HashSet<MessageId> = match stored {
            Ok(ids) => ids.into_iter().collect(),
            Err(err) => {
                let error = ApiError::from(err);
                for pending in batch {
                    let _ = pending.answer.send(Err(error.clone()));
                }
                return;
            }
        };
        for pending in batch {
            let message = &pending.message;
            let answer = if stored.contains(&message.id) {
                self.dispatcher.submit(Publishable {
                    kind: JobKind::Message,
                    id: message.id.0,
                    account: message.account,
                    attempts: 0,
                });
                Ok(())
            } else {
                Err(ApiError::not_found("user"))
            };
            // A request that gave up meanwhile: its row is stored and published all the same.
            let _ = pending.answer.send(answer);
        }
    }
}
