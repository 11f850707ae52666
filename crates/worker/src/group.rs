//! Claims and records in groups (docs/design.md, "The hot path is batched").
//! Each delivery asks for its own row (or records its own outcome) and waits
//! for its own answer; [`Grouped`] gathers what the other deliveries in
//! flight asked meanwhile and runs them as one statement per kind (one
//! commit). A row that is not claimable answers `None` to its delivery
//! alone; a failed statement answers its error (shared: an outage stays an
//! outage) to each.

use std::{collections::HashMap, sync::Arc, time::Duration};

use kurir_core::{
    JobKind,
    attempt::{Attempt, Resolution},
    runtime::{Asked, Grouped, Tasks},
};
use kurir_store::{
    Db, StoreError,
    pipeline::{self, Recorded},
};
use uuid::Uuid;

use crate::deliver::Claimed;

/// Most rows in one statement.
const BATCH: usize = 256;
/// Batches being committed at once: one. While it commits, the next batch
/// gathers, so batches grow with the load by themselves (measured: more in
/// flight meant smaller batches, more statements and more CPU per message).
const IN_FLIGHT: usize = 1;

type Claim = Result<Option<Claimed>, StoreError>;
type Record = Result<Recorded, StoreError>;

fn gone() -> StoreError {
    StoreError::Unavailable("the worker is stopping".into())
}

/// Claims and records for all deliveries of one worker.
#[derive(Clone)]
pub(crate) struct Groups {
    claims: Grouped<(JobKind, Uuid), Claim>,
    records: Grouped<(Resolution, Attempt), Record>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups").finish_non_exhaustive()
    }
}

impl Groups {
    /// `sender`: the WhatsApp phone number id claimed messages go out from
    /// ([`crate::provider::Provider::sender`]).
    pub(crate) fn start(db: Db, lease: Duration, sender: Option<Arc<str>>, tasks: &Tasks) -> Self {
        let claims = Grouped::start(BATCH, IN_FLIGHT, tasks, {
            let db = db.clone();
            move |group| claim(db.clone(), lease, sender.clone(), group)
        });
        let records = Grouped::start(BATCH, IN_FLIGHT, tasks, move |group| {
            record(db.clone(), group)
        });
        Self { claims, records }
    }

    /// Claims one row with whatever else is being claimed now.
    pub(crate) async fn claim(&self, kind: JobKind, id: Uuid) -> Claim {
        self.claims.ask((kind, id), || Err(gone())).await
    }

    /// Records one attempt and its outcome with whatever else is being
    /// recorded now.
    pub(crate) async fn record(&self, resolution: Resolution, attempt: Attempt) -> Record {
        self.records
            .ask((resolution, attempt), || Err(gone()))
            .await
    }
}

/// Answers every item of `group` with `answer(item)`, or all with the error.
fn answer_all<T, A>(
    group: Vec<Asked<T, Result<A, StoreError>>>,
    result: Result<impl Fn(&T) -> A, StoreError>,
) {
    match result {
        Ok(answer) => {
            for (item, reply) in group {
                let _ = reply.send(Ok(answer(&item)));
            }
        }
        Err(err) => {
            let share = err.shared();
            for (_, reply) in group {
                let _ = reply.send(Err(share()));
            }
        }
    }
}

async fn claim(
    db: Db,
    lease: Duration,
    sender: Option<Arc<str>>,
    group: Vec<Asked<(JobKind, Uuid), Claim>>,
) {
    let (messages, updates): (Vec<_>, Vec<_>) = group
        .into_iter()
        .partition(|((kind, _), _)| *kind == JobKind::Message);
    for (kind, group) in [
        (JobKind::Message, messages),
        (JobKind::StatusUpdate, updates),
    ] {
        if group.is_empty() {
            continue;
        }
        let ids: Vec<Uuid> = group.iter().map(|((_, id), _)| *id).collect();
        let claimed = db
            .run(async |client| {
                Ok(match kind {
                    JobKind::Message => {
                        pipeline::claim_messages(client, &ids, lease, sender.as_deref())
                            .await?
                            .into_iter()
                            .map(|m| (m.id.0, Claimed::Message(m)))
                            .collect::<HashMap<_, _>>()
                    }
                    JobKind::StatusUpdate => pipeline::claim_status_updates(client, &ids, lease)
                        .await?
                        .into_iter()
                        .map(|s| (s.id.0, Claimed::StatusUpdate(s)))
                        .collect::<HashMap<_, _>>(),
                })
            })
            .await;
        let claimed = claimed.map(std::sync::Mutex::new);
        answer_all(
            group,
            claimed.map(|claimed| {
                move |(_, id): &(JobKind, Uuid)| {
                    claimed.lock().unwrap_or_else(|e| e.into_inner()).remove(id)
                }
            }),
        );
    }
}

async fn record(db: Db, group: Vec<Asked<(Resolution, Attempt), Record>>) {
    let (messages, updates): (Vec<_>, Vec<_>) = group
        .into_iter()
        .partition(|((_, attempt), _)| attempt.kind == JobKind::Message);
    for (kind, group) in [
        (JobKind::Message, messages),
        (JobKind::StatusUpdate, updates),
    ] {
        if group.is_empty() {
            continue;
        }
        let (items, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let recorded = db
            .run(async |client| pipeline::record_many(client, kind, &items).await)
            .await;
        match recorded {
            Ok(recorded) => {
                for (reply, recorded) in replies.into_iter().zip(recorded) {
                    let _ = reply.send(Ok(recorded));
                }
            }
            Err(err) => {
                let share = err.shared();
                for reply in replies {
                    let _ = reply.send(Err(share()));
                }
            }
        }
    }
}
