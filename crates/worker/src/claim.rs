//! Claims in groups (DESIGN.md, "The hot path is batched"). Each delivery
//! asks for its row here and waits for its own answer; one task gathers the
//! envelopes that arrived meanwhile and claims them with one statement per
//! kind (one commit), a few groups at a time. A row that is not claimable
//! answers `None` to its delivery alone; a failed statement answers its
//! error to every delivery it served.

use std::{collections::HashMap, sync::Arc, time::Duration};

use kurir_core::{JobKind, runtime::Tasks};
use kurir_store::{PgPool, StoreError, pipeline};
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;

use crate::deliver::Claimed;

/// Most rows claimed in one statement.
const BATCH: usize = 256;
/// Groups being claimed at once.
const IN_FLIGHT: usize = 4;

type Answer = Result<Option<Claimed>, StoreError>;

struct Wanted {
    kind: JobKind,
    id: Uuid,
    answer: oneshot::Sender<Answer>,
}

/// Cheap to clone; all clones feed one gatherer, which ends once every
/// clone is gone.
#[derive(Clone)]
pub(crate) struct Claimer {
    tx: mpsc::Sender<Wanted>,
}

impl std::fmt::Debug for Claimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimer").finish_non_exhaustive()
    }
}

impl Claimer {
    pub(crate) fn start(
        pool: PgPool,
        lease: Duration,
        db_timeout: Duration,
        tasks: &Tasks,
    ) -> Self {
        let (tx, rx) = mpsc::channel(BATCH * IN_FLIGHT);
        let group = Group {
            pool,
            lease,
            db_timeout,
        };
        tasks.spawn(gather(rx, group, tasks.clone()));
        Self { tx }
    }

    /// Claims one row with whatever else is being claimed now.
    pub(crate) async fn claim(&self, kind: JobKind, id: Uuid) -> Answer {
        let (answer, answered) = oneshot::channel();
        let gone = || StoreError::Unavailable("the worker is stopping".into());
        self.tx
            .send(Wanted { kind, id, answer })
            .await
            .map_err(|_| gone())?;
        answered.await.unwrap_or_else(|_| Err(gone()))
    }
}

#[derive(Clone)]
struct Group {
    pool: PgPool,
    lease: Duration,
    db_timeout: Duration,
}

async fn gather(mut rx: mpsc::Receiver<Wanted>, group: Group, tasks: Tasks) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut wanted = Vec::with_capacity(BATCH);
        if rx.recv_many(&mut wanted, BATCH).await == 0 {
            return;
        }
        let group = group.clone();
        tasks.spawn(async move {
            group.claim(wanted).await;
            drop(permit);
        });
    }
}

impl Group {
    async fn claim(&self, wanted: Vec<Wanted>) {
        let (messages, updates): (Vec<Wanted>, Vec<Wanted>) =
            wanted.into_iter().partition(|w| w.kind == JobKind::Message);
        self.claim_kind(JobKind::Message, messages).await;
        self.claim_kind(JobKind::StatusUpdate, updates).await;
    }

    async fn claim_kind(&self, kind: JobKind, wanted: Vec<Wanted>) {
        if wanted.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = wanted.iter().map(|w| w.id).collect();
        let claimed = kurir_store::timed(self.db_timeout, async {
            let client = self.pool.get().await?;
            Ok(match kind {
                JobKind::Message => pipeline::claim_messages(&client, &ids, self.lease)
                    .await?
                    .into_iter()
                    .map(|m| (m.id, Claimed::Message(m)))
                    .collect::<HashMap<_, _>>(),
                JobKind::StatusUpdate => pipeline::claim_status_updates(&client, &ids, self.lease)
                    .await?
                    .into_iter()
                    .map(|s| (s.id, Claimed::StatusUpdate(s)))
                    .collect::<HashMap<_, _>>(),
            })
        })
        .await;
        match claimed {
            Ok(mut claimed) => {
                for w in wanted {
                    let _ = w.answer.send(Ok(claimed.remove(&w.id)));
                }
            }
            Err(err) => {
                for w in wanted {
                    let _ = w.answer.send(Err(err.share()));
                }
            }
        }
    }
}
