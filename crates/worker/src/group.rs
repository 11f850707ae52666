//! Claims in groups (DESIGN.md, "The hot path is batched"). Each delivery
//! asks for its own row and waits for its own answer; [`Grouped`] gathers
//! what the other deliveries in flight asked meanwhile and claims them with
//! one statement per kind (one commit). A row that is not claimable answers
//! `None` to its delivery alone; a failed statement answers its error
//! (shared: an outage stays an outage) to each.
//!
//! Outcomes are still recorded one statement each: a grouped record was
//! tried and measured no faster here (the machine's two cores were already
//! saturated), so it is not worth its code yet.

use std::{collections::HashMap, time::Duration};

use kurir_core::{
    JobKind,
    runtime::{Asked, Grouped, Tasks},
};
use kurir_store::{PgPool, StoreError, pipeline, timed};
use uuid::Uuid;

use crate::deliver::Claimed;

/// Most rows in one statement.
const BATCH: usize = 256;
/// Groups being run at once.
const IN_FLIGHT: usize = 4;

type Claim = Result<Option<Claimed>, StoreError>;

fn gone() -> StoreError {
    StoreError::Unavailable("the worker is stopping".into())
}

/// Claims for all deliveries of one worker.
#[derive(Clone)]
pub(crate) struct Groups {
    claims: Grouped<(JobKind, Uuid), Claim>,
}

impl std::fmt::Debug for Groups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups").finish_non_exhaustive()
    }
}

impl Groups {
    pub(crate) fn start(
        pool: PgPool,
        lease: Duration,
        db_timeout: Duration,
        tasks: &Tasks,
    ) -> Self {
        let claims = Grouped::start(BATCH, IN_FLIGHT, tasks, move |group| {
            claim(pool.clone(), lease, db_timeout, group)
        });
        Self { claims }
    }

    /// Claims one row with whatever else is being claimed now.
    pub(crate) async fn claim(&self, kind: JobKind, id: Uuid) -> Claim {
        self.claims.ask((kind, id), || Err(gone())).await
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
            for (_, reply) in group {
                let _ = reply.send(Err(err.share()));
            }
        }
    }
}

async fn claim(
    pool: PgPool,
    lease: Duration,
    db_timeout: Duration,
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
        let claimed = timed(db_timeout, async {
            let client = pool.get().await?;
            Ok(match kind {
                JobKind::Message => pipeline::claim_messages(&client, &ids, lease)
                    .await?
                    .into_iter()
                    .map(|m| (m.id, Claimed::Message(m)))
                    .collect::<HashMap<_, _>>(),
                JobKind::StatusUpdate => pipeline::claim_status_updates(&client, &ids, lease)
                    .await?
                    .into_iter()
                    .map(|s| (s.id, Claimed::StatusUpdate(s)))
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
