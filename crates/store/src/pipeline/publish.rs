//! Publishing: the relay claims rows to publish ([`claim_for_publish`]) and
//! marks those the broker confirmed ([`mark_published`]); a failed publish
//! is handed to the relay ([`release_publish`]); the guard publishes again
//! what stayed `queued` long after it was published
//! ([`claim_stale_published`]); an operator re-drives a dead letter's row
//! ([`replay`]). Marks are fenced by `attempts`: a row is marked only if it
//! is still `queued` at the attempt that was published.

use std::time::Duration;

use kurir_core::{AccountId, JobKind};
use tracing::instrument;
use uuid::Uuid;

use crate::{
    GenericClient, Result,
    columns::{secs, table, trace_of},
};

/// The channel the relay LISTENs on; a NOTIFY there wakes it early.
pub const RELAY_CHANNEL: &str = "kurir_relay";

/// A row to publish (the type is core's: the broker's envelope is made from it).
pub use kurir_core::Publishable;

/// Claims up to `limit` due, unpublished rows that nobody is publishing, for
/// `lease`. Concurrent relays skip each other's rows.
#[instrument(skip(client))]
pub async fn claim_for_publish(
    client: &impl GenericClient,
    kind: JobKind,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Publishable>> {
    let t = table(kind);
    let sql = format!(
        "UPDATE {t} SET publish_lease_until = now() + make_interval(secs => $2)
         WHERE id IN (
             SELECT id FROM {t}
             WHERE state = 'queued' AND NOT published AND due_at <= now()
               AND (publish_lease_until IS NULL OR publish_lease_until < now())
             ORDER BY due_at
             LIMIT $1
             FOR UPDATE SKIP LOCKED)
         RETURNING id, account_id, attempts, traceparent"
    );
    let statement = client.prepare_cached(&sql).await?;
    let rows = client.query(&statement, &[&limit, &secs(lease)]).await?;
    Ok(publishable(kind, &rows))
}

/// Rows of `RETURNING id, account_id, attempts, traceparent`.
fn publishable(kind: JobKind, rows: &[tokio_postgres::Row]) -> Vec<Publishable> {
    rows.iter()
        .map(|row| Publishable {
            kind,
            id: row.get("id"),
            account: AccountId(row.get("account_id")),
            attempts: row.get("attempts"),
            trace: trace_of(row),
        })
        .collect()
}

fn split(rows: &[Publishable]) -> (Vec<Uuid>, Vec<i32>) {
    rows.iter().map(|row| (row.id, row.attempts)).unzip()
}

/// Marks rows the broker confirmed, and when (the guard's clock). Rows that
/// moved on meanwhile (a worker already claimed them) are left alone. `rows`
/// must all be of `kind`.
pub async fn mark_published(
    client: &impl GenericClient,
    kind: JobKind,
    rows: &[Publishable],
) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let t = table(kind);
    let sql = format!(
        "UPDATE {t} AS t SET published = true, published_at = now(), publish_lease_until = NULL
         FROM unnest($1::uuid[], $2::int4[]) AS p(id, attempts)
         WHERE t.id = p.id AND t.id = ANY($1) AND t.attempts = p.attempts AND t.state = 'queued'"
    );
    let statement = client.prepare_cached(&sql).await?;
    let (ids, attempts) = split(rows);
    Ok(client.execute(&statement, &[&ids, &attempts]).await?)
}

/// Hands rows that could not be published to the relay (unpublished, no
/// publish lease), so its next round takes them at once. With `wake`, also
/// NOTIFYs the relays (the API does, after a failed publish; a relay
/// releasing its own rows does not, or it would wake itself straight back
/// into the same failure).
pub async fn release_publish(
    client: &impl GenericClient,
    kind: JobKind,
    rows: &[Publishable],
    wake: bool,
) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let t = table(kind);
    let sql = format!(
        "UPDATE {t} AS t SET published = false, published_at = NULL, publish_lease_until = NULL
         FROM unnest($1::uuid[], $2::int4[]) AS p(id, attempts)
         WHERE t.id = p.id AND t.id = ANY($1) AND t.attempts = p.attempts AND t.state = 'queued'"
    );
    let statement = client.prepare_cached(&sql).await?;
    let (ids, attempts) = split(rows);
    let released = client.execute(&statement, &[&ids, &attempts]).await?;
    if wake && released > 0 {
        notify_relays(client).await?;
    }
    Ok(released)
}

/// Wakes every relay (a hint: they also poll).
pub async fn notify_relays(client: &impl GenericClient) -> Result<()> {
    let statement = client
        .prepare_cached(&format!("SELECT pg_notify('{RELAY_CHANNEL}', '')"))
        .await?;
    client.execute(&statement, &[]).await?;
    Ok(())
}

/// The guard: claims up to `limit` rows that are still `queued` although
/// their envelope was confirmed more than `older_than` ago, for `lease`, to
/// publish them again. A consumer holding the old copy, if any, finds the row
/// claimed already and drops it.
#[instrument(skip(client))]
pub async fn claim_stale_published(
    client: &impl GenericClient,
    kind: JobKind,
    limit: i64,
    lease: Duration,
    older_than: Duration,
) -> Result<Vec<Publishable>> {
    let t = table(kind);
    let sql = format!(
        "UPDATE {t} SET publish_lease_until = now() + make_interval(secs => $2)
         WHERE id IN (
             SELECT id FROM {t}
             WHERE state = 'queued' AND published
               AND (published_at IS NULL OR published_at < now() - make_interval(secs => $3))
               AND (publish_lease_until IS NULL OR publish_lease_until < now())
             ORDER BY published_at NULLS FIRST
             LIMIT $1
             FOR UPDATE SKIP LOCKED)
         RETURNING id, account_id, attempts, traceparent"
    );
    let statement = client.prepare_cached(&sql).await?;
    let rows = client
        .query(&statement, &[&limit, &secs(lease), &secs(older_than)])
        .await?;
    Ok(publishable(kind, &rows))
}

/// What [`replay`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replayed {
    /// Queued again for the relay, which publishes it at once (or when its
    /// retry is due).
    Queued,
    /// A worker is delivering it right now.
    InDelivery,
    /// It reached a final state already; nothing to do.
    Final,
    /// No such row.
    Missing,
}

/// An operator re-drives a dead-lettered envelope: its row, if still queued,
/// is marked unpublished so the relay publishes it again (the claim drops any
/// other copy, so replaying twice sends nothing twice).
pub async fn replay(client: &impl GenericClient, kind: JobKind, id: Uuid) -> Result<Replayed> {
    let t = table(kind);
    let sql = format!(
        "WITH found AS (SELECT state FROM {t} WHERE id = $1),
              queued AS (UPDATE {t} SET published = false, publish_lease_until = NULL
                         WHERE id = $1 AND state = 'queued' RETURNING 1)
         SELECT (SELECT state FROM found)"
    );
    let statement = client.prepare_cached(&sql).await?;
    let row = client.query_one(&statement, &[&id]).await?;
    let replayed = match row.get::<_, Option<&str>>(0) {
        None => Replayed::Missing,
        Some("queued") => Replayed::Queued,
        Some("sending") => Replayed::InDelivery,
        Some(_) => Replayed::Final,
    };
    if replayed == Replayed::Queued {
        notify_relays(client).await?;
    }
    Ok(replayed)
}
