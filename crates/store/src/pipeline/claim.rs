//! Delivering, the claim side: a worker takes rows ([`claim_messages`],
//! [`claim_status_updates`]: `queued` and due → `sending`, attempts + 1,
//! leased), gives one back at shutdown ([`release_claim`]), and rows whose
//! worker died go back to the queue ([`requeue_expired`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use kurir_core::{
    AccountId, Content, JobKind, MessageId, PhoneNumber, StatusText, StatusUpdateId, UserId,
};
use tracing::instrument;
use uuid::Uuid;

use crate::{
    GenericClient, Result,
    columns::{content, secs, table},
};

/// Puts rows whose delivery lease expired (their worker died) back in the
/// queue, unpublished, due now. Returns how many.
#[instrument(skip(client))]
pub async fn requeue_expired(
    client: &impl GenericClient,
    kind: JobKind,
    limit: i64,
) -> Result<u64> {
    let t = table(kind);
    let sql = format!(
        "UPDATE {t} SET state = 'queued', lease_until = NULL, published = false,
                        publish_lease_until = NULL, due_at = now(), updated_at = now()
         WHERE id IN (
             SELECT id FROM {t}
             WHERE state = 'sending' AND lease_until < now()
             LIMIT $1
             FOR UPDATE SKIP LOCKED)"
    );
    let statement = client.prepare_cached(&sql).await?;
    Ok(client.execute(&statement, &[&limit]).await?)
}

/// A message a worker now holds: what its provider is handed.
#[derive(Debug, Clone)]
pub struct ClaimedMessage {
    pub id: MessageId,
    pub account: AccountId,
    pub user_id: UserId,
    pub to: PhoneNumber,
    pub content: Content,
    /// This attempt's number, 1 for the first.
    pub attempt: i32,
    pub created_at: DateTime<Utc>,
}

/// A status update a worker now holds: what its provider is handed.
#[derive(Debug, Clone)]
pub struct ClaimedStatusUpdate {
    pub id: StatusUpdateId,
    pub account: AccountId,
    pub user_id: UserId,
    pub phone_number: PhoneNumber,
    pub status: StatusText,
    pub attempt: i32,
    pub created_at: DateTime<Utc>,
}

fn claim_sql(kind: JobKind, payload: &str) -> String {
    let t = table(kind);
    // A message records the number it goes out from ($3), which scopes the
    // receipts that may touch it (crate::receipts).
    let sender = match kind {
        JobKind::Message => "sender_id = $3,",
        JobKind::StatusUpdate => "",
    };
    let template = match kind {
        JobKind::Message => "j.template",
        JobKind::StatusUpdate => "NULL::jsonb",
    };
    format!(
        "UPDATE {t} AS j
         SET state = 'sending', attempts = j.attempts + 1, {sender}
             lease_until = now() + make_interval(secs => $2),
             publish_lease_until = NULL, updated_at = now()
         FROM users u
         WHERE j.id = ANY($1) AND j.state = 'queued' AND j.due_at <= now()
           AND u.account_id = j.account_id AND u.id = j.user_id
         RETURNING j.id, j.account_id, j.user_id, u.phone_number, {payload} AS payload,
                   {template} AS template, j.attempts, j.created_at"
    )
}

/// Runs the claim of `kind` for `ids`; rows as [`claim_sql`] returns them.
async fn claim_rows(
    client: &impl GenericClient,
    kind: JobKind,
    payload: &str,
    ids: &[Uuid],
    lease: Duration,
    sender: Option<&str>,
) -> Result<Vec<tokio_postgres::Row>> {
    let statement = client.prepare_cached(&claim_sql(kind, payload)).await?;
    let lease = secs(lease);
    Ok(match kind {
        JobKind::Message => client.query(&statement, &[&ids, &lease, &sender]).await?,
        JobKind::StatusUpdate => client.query(&statement, &[&ids, &lease]).await?,
    })
}

/// Takes messages for delivery, in one statement for many envelopes at once:
/// `queued` and due → `sending`, attempts + 1, leased. An id missing from
/// the answer is not claimable (delivered already, not due yet, or another
/// worker holds it): its broker copy is a harmless duplicate. `sender` is
/// the WhatsApp phone number id the attempt goes out from (`None` for a
/// provider that is not WhatsApp); receipts match it.
#[instrument(skip_all, fields(count = ids.len()))]
pub async fn claim_messages(
    client: &impl GenericClient,
    ids: &[Uuid],
    lease: Duration,
    sender: Option<&str>,
) -> Result<Vec<ClaimedMessage>> {
    let rows = claim_rows(client, JobKind::Message, "j.body", ids, lease, sender).await?;
    rows.iter()
        .map(|row| {
            Ok(ClaimedMessage {
                id: MessageId(row.get("id")),
                account: AccountId(row.get("account_id")),
                user_id: UserId::from_trusted(row.get("user_id")),
                to: PhoneNumber::from_trusted(row.get("phone_number")),
                content: content(row.get("payload"), row.get("template"))?,
                attempt: row.get("attempts"),
                created_at: row.get("created_at"),
            })
        })
        .collect()
}

/// Takes status updates for delivery, as [`claim_messages`].
#[instrument(skip_all, fields(count = ids.len()))]
pub async fn claim_status_updates(
    client: &impl GenericClient,
    ids: &[Uuid],
    lease: Duration,
) -> Result<Vec<ClaimedStatusUpdate>> {
    let rows = claim_rows(client, JobKind::StatusUpdate, "j.status", ids, lease, None).await?;
    Ok(rows
        .iter()
        .map(|row| ClaimedStatusUpdate {
            id: StatusUpdateId(row.get("id")),
            account: AccountId(row.get("account_id")),
            user_id: UserId::from_trusted(row.get("user_id")),
            phone_number: PhoneNumber::from_trusted(row.get("phone_number")),
            status: StatusText::from_trusted(row.get("payload")),
            attempt: row.get("attempts"),
            created_at: row.get("created_at"),
        })
        .collect())
}

/// Gives a claimed row back (the worker's shutdown grace ended before the
/// provider answered), so another worker takes it now rather than after the lease.
pub async fn release_claim(
    client: &impl GenericClient,
    kind: JobKind,
    id: Uuid,
    attempt: i32,
) -> Result<bool> {
    let t = table(kind);
    let sql = format!(
        "UPDATE {t} SET state = 'queued', lease_until = NULL, published = false,
                        publish_lease_until = NULL, updated_at = now()
         WHERE id = $1 AND state = 'sending' AND attempts = $2"
    );
    let statement = client.prepare_cached(&sql).await?;
    Ok(client.execute(&statement, &[&id, &attempt]).await? == 1)
}
