//! Publishing right after accepting. Before it commits, an accept reserves
//! room here for its rows; with room, the rows are stored as published
//! already (no second write when the broker confirms) and handed here after
//! the commit. One task publishes what has gathered as a pipelined batch.
//! Rows the broker does not confirm, and rows handed in while the broker is
//! away or the API is stopping, are released to the relay in one UPDATE per
//! kind. Without room (the dispatcher is behind), the accept stores its rows
//! for the relay. Either way the row in Postgres is the promise: if this
//! process dies between the commit and the publish, the relay's guard
//! publishes the row after `KURIR_REPUBLISH_AFTER`.

use kurir_bus::{Envelope, Publisher};
use kurir_core::{JobKind, runtime::Tasks};
use kurir_store::{
    Db, StoreError,
    pipeline::{self, Publishable, Publishing},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Most rows published in one batch.
const BATCH: usize = 512;
/// Rows waiting to be published; past this, accepts leave rows to the relay.
const BACKLOG: usize = 8192;

#[derive(Debug, Clone)]
pub struct Dispatcher {
    tx: mpsc::Sender<Publishable>,
    publisher: Publisher,
}

impl Dispatcher {
    pub fn start(db: Db, publisher: Publisher, tasks: &Tasks, shutdown: CancellationToken) -> Self {
        let (tx, rx) = mpsc::channel(BACKLOG);
        tasks.spawn(run(rx, db, publisher.clone(), shutdown));
        Self { tx, publisher }
    }

    /// Room to publish `rows` rows right after their commit. Never waits:
    /// no room (the dispatcher is behind or stopped, or the broker is away)
    /// means the rows are the relay's.
    pub fn reserve(&self, rows: usize) -> Slots<'_> {
        if rows == 0 || !self.publisher.is_connected() {
            return Slots(None);
        }
        let permits = self.tx.try_reserve_many(rows).ok();
        if permits.is_none() {
            debug!(rows, "dispatcher busy; leaving the rows to the relay");
        }
        Slots(permits)
    }
}

/// Room reserved in the dispatcher, one slot per row of an accept.
pub struct Slots<'a>(Option<mpsc::PermitIterator<'a, Publishable>>);

impl Slots<'_> {
    /// How the accept must store its rows.
    pub fn publishing(&self) -> Publishing {
        match self.0 {
            Some(_) => Publishing::ByCaller,
            None => Publishing::ByRelay,
        }
    }

    /// Hands a committed row over (rows stored for the relay are not).
    pub fn submit(&mut self, row: Publishable) {
        if let Some(permit) = self.0.as_mut().and_then(Iterator::next) {
            permit.send(row);
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Publishable>,
    db: Db,
    publisher: Publisher,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        let received = tokio::select! {
            () = shutdown.cancelled() => break,
            received = rx.recv_many(&mut batch, BATCH) => received,
        };
        if received == 0 {
            return;
        }
        let failed = if publisher.is_connected() {
            publish(&publisher, &batch).await
        } else {
            debug!(
                rows = batch.len(),
                "broker unavailable; releasing rows to the relay"
            );
            batch.clone()
        };
        release(&db, &failed).await;
    }
    // Stopping, and so is the publisher: what is handed in from now on (the
    // accepts committing right now hold slots) goes to the relay.
    rx.close();
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        release(&db, &batch).await;
    }
}

/// Publishes `rows`; returns those the broker did not confirm.
async fn publish(publisher: &Publisher, rows: &[Publishable]) -> Vec<Publishable> {
    let published = publisher
        .publish_each(rows, |row| Envelope::from(row))
        .await;
    if let Some(err) = &published.first_error {
        debug!(error = %err, rows = published.failed.len(), "publish failed; releasing to the relay");
    }
    published.failed
}

/// Hands `rows` to the relay. If Postgres is away too, they stay marked
/// published, and the guard publishes them after `KURIR_REPUBLISH_AFTER`.
async fn release(db: &Db, rows: &[Publishable]) {
    if rows.is_empty() {
        return;
    }
    if let Err(err) = release_each_kind(db, rows).await {
        warn!(error = %err, rows = rows.len(), "could not hand unpublished rows to the relay; the guard will publish them later");
    }
}

async fn release_each_kind(db: &Db, rows: &[Publishable]) -> Result<(), StoreError> {
    db.run(async |client| {
        for (kind, of_kind) in by_kind(rows) {
            pipeline::release_publish(client, kind, &of_kind, true).await?;
        }
        Ok(())
    })
    .await
}

/// `rows` by kind, one UPDATE each; a kind with no rows is left out.
fn by_kind(rows: &[Publishable]) -> Vec<(JobKind, Vec<Publishable>)> {
    JobKind::ALL
        .into_iter()
        .map(|kind| {
            let of_kind = rows
                .iter()
                .filter(|row| row.kind == kind)
                .copied()
                .collect();
            (kind, of_kind)
        })
        .filter(|(_, of_kind): &(JobKind, Vec<Publishable>)| !of_kind.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use kurir_core::AccountId;
    use uuid::Uuid;

    use super::*;

    fn row(kind: JobKind) -> Publishable {
        Publishable::accepted(kind, Uuid::now_v7(), AccountId(1), None)
    }

    #[test]
    fn unpublished_rows_go_back_in_one_update_per_kind_and_none_for_an_absent_kind() {
        let rows = [
            row(JobKind::StatusUpdate),
            row(JobKind::Message),
            row(JobKind::Message),
        ];
        let split = by_kind(&rows);
        let shape: Vec<(JobKind, usize)> = split.iter().map(|(k, r)| (*k, r.len())).collect();
        assert_eq!(shape, [(JobKind::Message, 2), (JobKind::StatusUpdate, 1)]);
        assert!(
            by_kind(&[row(JobKind::Message)])
                .iter()
                .all(|(kind, _)| *kind == JobKind::Message)
        );
        assert!(by_kind(&[]).is_empty());
    }
}
