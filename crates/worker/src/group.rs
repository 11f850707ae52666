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

/// Most rows in one statement.
const BATCH: usize = 256;
/// Batches being committed at once: one. While it commits, the next batch
/// gathers, so batches grow with the load by themselves (measured: more in
/// flight meant smaller batches, more statements and more CPU per message).
const IN_FLIGHT: usize = 1;

/// A claimed row, ready for the provider.
pub(crate) enum Claimed {
    Message(pipeline::ClaimedMessage),
    StatusUpdate(pipeline::ClaimedStatusUpdate),
}

impl Claimed {
    pub(crate) fn attempt(&self) -> i32 {
        match self {
            Claimed::Message(m) => m.attempt,
            Claimed::StatusUpdate(s) => s.attempt,
        }
    }

    /// The row's own account (the envelope's copy is only a hint for logs).
    pub(crate) fn account(&self) -> kurir_core::AccountId {
        match self {
            Claimed::Message(m) => m.account,
            Claimed::StatusUpdate(s) => s.account,
        }
    }

    pub(crate) fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        match self {
            Claimed::Message(m) => m.created_at,
            Claimed::StatusUpdate(s) => s.created_at,
        }
    }
}

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

/// A group split by kind, messages first: one statement each; a kind with
/// nothing asked is left out.
fn by_kind<T, R>(
    group: Vec<Asked<T, R>>,
    kind_of: impl Fn(&T) -> JobKind,
) -> Vec<(JobKind, Vec<Asked<T, R>>)> {
    let (messages, updates): (Vec<_>, Vec<_>) = group
        .into_iter()
        .partition(|(item, _)| kind_of(item) == JobKind::Message);
    [
        (JobKind::Message, messages),
        (JobKind::StatusUpdate, updates),
    ]
    .into_iter()
    .filter(|(_, group)| !group.is_empty())
    .collect()
}

async fn claim(
    db: Db,
    lease: Duration,
    sender: Option<Arc<str>>,
    group: Vec<Asked<(JobKind, Uuid), Claim>>,
) {
    for (kind, group) in by_kind(group, |(kind, _)| *kind) {
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
    for (kind, group) in by_kind(group, |(_, attempt)| attempt.kind) {
        let (items, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
        let recorded = db
            .run(async |client| pipeline::record_many(client, kind, &items).await)
            .await;
        // record_many answers one per item, in order.
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

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    type Answer = Result<Option<u32>, StoreError>;

    fn asked<T>(item: T) -> (Asked<T, Answer>, oneshot::Receiver<Answer>) {
        let (reply, answer) = oneshot::channel();
        ((item, reply), answer)
    }

    #[test]
    fn a_group_is_one_statement_per_kind_messages_first_and_an_unasked_kind_is_skipped() {
        let (a, _) = asked((JobKind::StatusUpdate, 1));
        let (b, _) = asked((JobKind::Message, 2));
        let (c, _) = asked((JobKind::StatusUpdate, 3));
        let split = by_kind(vec![a, b, c], |(kind, _)| *kind);
        let kinds: Vec<(JobKind, Vec<i32>)> = split
            .iter()
            .map(|(kind, group)| (*kind, group.iter().map(|((_, n), _)| *n).collect()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (JobKind::Message, vec![2]),
                (JobKind::StatusUpdate, vec![1, 3])
            ]
        );

        let (only, _) = asked((JobKind::Message, 4));
        let split = by_kind(vec![only], |(kind, _)| *kind);
        assert_eq!(split.len(), 1, "no statement for status updates");
    }

    #[test]
    fn each_delivery_hears_its_own_row_and_one_not_claimed_hears_none() {
        let (a, mut first) = asked(1u32);
        let (b, mut second) = asked(2u32);
        answer_all(vec![a, b], Ok(|n: &u32| (*n == 1).then_some(*n * 10)));
        assert_eq!(first.try_recv().unwrap().unwrap(), Some(10));
        assert_eq!(second.try_recv().unwrap().unwrap(), None);
    }

    #[test]
    fn a_failed_statement_answers_each_delivery_and_an_outage_stays_an_outage() {
        let (a, mut first) = asked(1u32);
        let (b, mut second) = asked(2u32);
        answer_all(
            vec![a, b],
            Err::<fn(&u32) -> Option<u32>, _>(StoreError::Unavailable("down".into())),
        );
        for answer in [first.try_recv().unwrap(), second.try_recv().unwrap()] {
            assert!(answer.unwrap_err().is_unavailable());
        }
        let (c, mut third) = asked(3u32);
        answer_all(
            vec![c],
            Err::<fn(&u32) -> Option<u32>, _>(StoreError::Corrupt("a bug".into())),
        );
        let err = third.try_recv().unwrap().unwrap_err();
        assert!(!err.is_unavailable());
        assert_eq!(err.to_string(), "corrupt row: a bug");
    }
}
