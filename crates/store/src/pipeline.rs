//! The delivery pipeline's SQL, shared by both kinds of work (messages and
//! status updates have the same pipeline columns; see the first migration).
//!
//! - publishing: rows are accepted as published by the API when it
//!   publishes them itself ([`Publishing`]), or claimed by the relay
//!   ([`claim_for_publish`], then [`mark_published`]); [`release_publish`]
//!   hands a failed publish to the relay; the guard [`claim_stale_published`] publishes again
//!   what stayed `queued` long after it was published; [`replay`] re-drives
//!   a row an operator took from the dead-letter queue;
//! - delivering: [`claim_messages`] / [`claim_status_updates`] (queued → sending,
//!   attempts + 1, with a lease), then [`record_many`] (outcomes and their
//!   attempts, many rows in one statement), or [`expire`] for a row claimed past its
//!   retry deadline (failed with no provider call, so no attempt);
//!   [`requeue_expired`] gives back rows whose worker died;
//! - reading the history: [`attempts_for`], scoped to an account;
//! - telling who waits: every statement that takes rows a request waits for
//!   to a final state ([`record_many`], [`expire`]) NOTIFYs [`DONE_CHANNEL`]
//!   naming them and their state ([`done_rows`] reads it back); [`state_of`]
//!   reads one row's state, for a waiter that may have missed its notification.
//!
//! `attempts` fences stale writers: an outcome is recorded only if the row is
//! still `sending` at the attempt the writer claimed, and a publish is marked
//! only if the row is still `queued` at the attempt that was published.

use std::time::Duration;

use chrono::{DateTime, Utc};
use kurir_core::{
    AccountId, Content, JobKind, JobState, LastError, MessageId, PhoneNumber, StatusText,
    StatusUpdateId, TraceContext, UserId,
};
use tracing::instrument;
use uuid::Uuid;

use crate::{GenericClient, Result, corrupt};

/// The channel the relay LISTENs on; a NOTIFY there wakes it early.
pub const RELAY_CHANNEL: &str = "kurir_relay";

/// The channel that hears of rows reaching a final state (a message `sent`
/// or `failed`, a status update `success` or `failed`), of the rows a
/// request waits for (stored `waited`, see [`insert_accepted`]) only: one
/// NOTIFY per statement that finished any (more for a large one,
/// [`DONE_PER_NOTIFY`] rows each), committed with it. Its payload is the
/// kind, then `id:state` for each row, separated by spaces:
/// `message 0190…:sent 0190…:failed`. [`done_rows`] reads it.
pub const DONE_CHANNEL: &str = "kurir_done";

/// Most rows one NOTIFY on [`DONE_CHANNEL`] names, so that its payload
/// stays under Postgres' 8,000 bytes: at most 46 bytes a row
/// (`" " + 36 + ":" + "success"`) and the kind's name, 6,913 bytes in all.
pub const DONE_PER_NOTIFY: usize = 150;

/// A CTE `notified` that NOTIFYs [`DONE_CHANNEL`] of the rows of CTE
/// `source` (with columns `id`, `state`, the row's new state, and `waited`)
/// that are final now and waited for, [`DONE_PER_NOTIFY`] to a
/// notification; a statement that finished no such row notifies nothing.
/// The statement must read `notified` (a CTE nobody reads is not run).
pub(crate) fn notify_done(kind: JobKind, source: &str) -> String {
    format!(
        "notified AS (
             SELECT pg_notify('{DONE_CHANNEL}', '{kind} ' || string_agg(f.id::text || ':' || f.state, ' '))
             FROM (SELECT id, state, (row_number() OVER () - 1) / {DONE_PER_NOTIFY} AS chunk
                   FROM {source} WHERE waited AND state <> 'queued') f
             GROUP BY f.chunk)"
    )
}

/// One row a [`DONE_CHANNEL`] notification names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    pub kind: JobKind,
    pub id: Uuid,
    pub state: JobState,
}

/// The rows a [`DONE_CHANNEL`] payload names; an error for a payload this
/// version did not write.
pub fn done_rows(payload: &str) -> Result<Vec<Done>> {
    let mut words = payload.split(' ');
    let kind: JobKind = words
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|err| corrupt(format!("done notification: {err}")))?;
    words
        .map(|word| {
            let (id, state) = word
                .split_once(':')
                .ok_or_else(|| corrupt(format!("done notification entry {word:?}")))?;
            Ok(Done {
                kind,
                id: Uuid::parse_str(id).map_err(corrupt)?,
                state: JobState::parse(kind, state).map_err(corrupt)?,
            })
        })
        .collect()
}

/// Where one row stands now; `None` if there is no such row. By id alone:
/// for a caller that holds the id of a row it stored itself (a waiting
/// request), never for an id a client named.
pub async fn state_of(
    client: &impl GenericClient,
    kind: JobKind,
    id: Uuid,
) -> Result<Option<JobState>> {
    let t = table(kind);
    let statement = client
        .prepare_cached(&format!("SELECT state FROM {t} WHERE id = $1"))
        .await?;
    client
        .query_opt(&statement, &[&id])
        .await?
        .map(|row| JobState::parse(kind, row.get("state")).map_err(corrupt))
        .transpose()
}

fn table(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Message => "messages",
        JobKind::StatusUpdate => "status_updates",
    }
}

fn secs(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// A row to publish: enough for the envelope and for fencing the mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publishable {
    pub kind: JobKind,
    pub id: Uuid,
    pub account: AccountId,
    pub attempts: i32,
    /// The trace of the request that created the row, for the envelope's
    /// `traceparent` header.
    pub trace: Option<TraceContext>,
}

impl Publishable {
    /// A row just accepted (no attempt yet).
    pub(crate) fn accepted(
        kind: JobKind,
        id: Uuid,
        account: AccountId,
        trace: Option<TraceContext>,
    ) -> Self {
        Self {
            kind,
            id,
            account,
            attempts: 0,
            trace,
        }
    }
}

/// A stored `traceparent` (one this version wrote, or none).
fn trace_of(row: &tokio_postgres::Row) -> Option<TraceContext> {
    row.get::<_, Option<&str>>("traceparent")
        .and_then(TraceContext::parse)
}

/// Who publishes rows as they are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publishing {
    /// The accepting process, right after the commit (it has room in its
    /// dispatcher): the row is stored as published, so it never costs a
    /// second write. If that process dies before its publish, the guard
    /// publishes the row after `KURIR_REPUBLISH_AFTER`; if the publish
    /// fails, the process releases the row to the relay ([`release_publish`]).
    ByCaller,
    /// The relay, at its next round (the dispatcher has no room, or the
    /// broker is away).
    ByRelay,
}

impl Publishing {
    pub(crate) fn published(self) -> bool {
        self == Publishing::ByCaller
    }
}

/// One row for [`insert_accepted`].
pub(crate) struct AcceptedRow<'a> {
    pub id: Uuid,
    pub account: AccountId,
    pub user: &'a str,
    /// A message's body (`None` for a template) or a status update's status.
    pub text: Option<&'a str>,
    /// A message's template (only messages have one).
    pub template: Option<serde_json::Value>,
    /// A request waits for its outcome: its final state is NOTIFYed on
    /// [`DONE_CHANNEL`].
    pub waited: bool,
    /// The trace of the request that created it.
    pub trace: Option<TraceContext>,
}

/// The accept shared by both kinds: one multi-row INSERT of
/// [`AcceptedRow`]s, stored as `publishing` says; a row whose user does not
/// exist in its account is not stored. Returns the rows stored (what is to
/// be published), and wakes the relays if they are to publish them.
pub(crate) async fn insert_accepted<'a>(
    client: &impl GenericClient,
    kind: JobKind,
    rows: impl Iterator<Item = AcceptedRow<'a>>,
    publishing: Publishing,
) -> Result<Vec<Accepted>> {
    let mut ids = Vec::new();
    let mut accounts = Vec::new();
    let mut users = Vec::new();
    let mut texts = Vec::new();
    let mut waited = Vec::new();
    let mut templates = Vec::new();
    let mut traces = Vec::new();
    for row in rows {
        traces.push(row.trace.map(|t| t.to_string()));
        ids.push(row.id);
        accounts.push(row.account.0);
        users.push(row.user);
        texts.push(row.text);
        templates.push(row.template);
        waited.push(row.waited);
    }
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let t = table(kind);
    let (text, template, template_value) = match kind {
        JobKind::Message => ("body", ", template", ", n.template"),
        JobKind::StatusUpdate => ("status", "", ""),
    };
    // A text to a user whose 24-hour window kurir knows to be closed: the
    // request's answer warns of it (README, "The 24-hour window").
    let outside_window = match kind {
        JobKind::Message => {
            "COALESCE(body IS NOT NULL AND
                 (SELECT max(c.last_inbound_at) FROM whatsapp_contacts c
                  WHERE c.wa_id = (SELECT substr(u.phone_number, 2) FROM users u
                                   WHERE u.account_id = messages.account_id AND u.id = messages.user_id))
                 < now() - interval '24 hours', false)"
        }
        JobKind::StatusUpdate => "false",
    };
    let statement = client
        .prepare_cached(&format!(
            "INSERT INTO {t} (id, account_id, user_id, {text}, published, published_at, waited,
                              traceparent{template})
             SELECT n.id, u.account_id, u.id, n.text, $5, CASE WHEN $5 THEN now() END, n.waited,
                    n.traceparent{template_value}
             FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $6::bool[], $7::jsonb[],
                         $8::text[])
                  AS n(id, account_id, user_id, text, waited, template, traceparent)
             JOIN users u ON u.account_id = n.account_id AND u.id = n.user_id
             RETURNING id, account_id, traceparent, {outside_window} AS outside_window"
        ))
        .await?;
    let stored = client
        .query(
            &statement,
            &[
                &ids,
                &accounts,
                &users,
                &texts,
                &publishing.published(),
                &waited,
                &templates,
                &traces,
            ],
        )
        .await?;
    if publishing == Publishing::ByRelay && !stored.is_empty() {
        notify_relays(client).await?;
    }
    Ok(stored
        .iter()
        .map(|row| Accepted {
            row: Publishable::accepted(
                kind,
                row.get("id"),
                AccountId(row.get("account_id")),
                trace_of(row),
            ),
            outside_window: row.get("outside_window"),
        })
        .collect())
}

/// A row [`insert_accepted`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub row: Publishable,
    /// A text message to a user whose 24-hour window is known to be closed
    /// (they last wrote more than 24 hours ago): WhatsApp will likely
    /// refuse it (131047).
    pub outside_window: bool,
}

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
                content: crate::messages::content(row.get("payload"), row.get("template"))?,
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

/// What an attempt decided for its row.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// Delivered: message `sent`, status update `success` (and the user's
    /// status takes the new text).
    Done { provider_message_id: Option<String> },
    /// Back to `queued`, unpublished, due `after` from now (Postgres' clock).
    Retry { after: Duration, error: LastError },
    /// `failed` for good.
    Failed { error: LastError },
}

/// What [`record_many`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// The row took the outcome and the attempt was recorded.
    Applied,
    /// This very attempt was recorded before: a repeat of a record whose
    /// reply was lost. Nothing changed, nothing is wrong.
    AlreadyRecorded,
    /// The row moved on meanwhile (its lease expired and another worker
    /// claimed it): the attempt is kept as history only.
    Superseded,
}

/// Records attempts and what each decided, for many rows of `kind` in one
/// statement (one round trip, one commit, atomic): each row's new state, and
/// its `delivery_attempts` entry; the rows that are final now and waited
/// for are NOTIFYed on [`DONE_CHANNEL`]. Answers one [`Recorded`] per item, in order.
///
/// Fences: a final outcome still counts if the row was re-queued after our
/// lease expired (Postgres was away longer than the lease) but nobody claimed
/// it again yet, since the next claim would bump `attempts`. A retry does not:
/// the row is already queued again, and a relay may be publishing it.
#[instrument(skip_all, fields(%kind, count = items.len()))]
pub async fn record_many(
    client: &impl GenericClient,
    kind: JobKind,
    items: &[(Resolution, Attempt)],
) -> Result<Vec<Recorded>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let columns = RecordColumns::of(items)?;
    let statement = client.prepare_cached(&record_sql(kind)).await?;
    let row = client
        .query_one(
            &statement,
            &[
                &columns.id,
                &columns.attempt,
                &columns.state,
                &columns.retry_secs,
                &columns.error,
                &columns.provider_message_id,
                &kind.as_str(),
                &columns.account_id,
                &columns.provider,
                &columns.outcome,
                &columns.http_status,
                &columns.error_code,
                &columns.error_detail,
                &columns.latency_ms,
                &columns.started_at,
            ],
        )
        .await?;
    let done: Vec<Uuid> = row.get::<_, Option<Vec<Uuid>>>(0).unwrap_or_default();
    let recorded: Vec<Uuid> = row.get::<_, Option<Vec<Uuid>>>(1).unwrap_or_default();
    Ok(items
        .iter()
        .map(|(_, attempt)| {
            if done.contains(&attempt.subject_id) {
                Recorded::Applied
            } else if recorded.contains(&attempt.subject_id) {
                Recorded::Superseded
            } else {
                Recorded::AlreadyRecorded
            }
        })
        .collect())
}

/// The statement of [`record_many`]: its input is one array per column
/// (`$1`–`$6` the row's, `$7`–`$15` the attempt's), unnested into rows.
fn record_sql(kind: JobKind) -> String {
    let t = table(kind);
    let success = final_state(kind);
    // Message: sent_at / failed_at and the provider's id; status update:
    // completed_at either way, and the user's status takes the new text.
    let (finished, extra, applied) = match kind {
        JobKind::Message => (
            "sent_at = CASE WHEN i.state = 'sent' THEN now() ELSE t.sent_at END,
             failed_at = CASE WHEN i.state = 'failed' THEN now() ELSE t.failed_at END,",
            "provider_message_id = CASE WHEN i.state = 'sent' THEN i.provider_message_id
                                        ELSE t.provider_message_id END,",
            "",
        ),
        JobKind::StatusUpdate => (
            "completed_at = CASE WHEN i.state = 'queued' THEN t.completed_at ELSE now() END,",
            "",
            // The newest applied text per user, unless an even newer update
            // already set it.
            ",
             applied AS (
                 UPDATE users u SET status = d.status, status_set_at = d.created_at, updated_at = now()
                 FROM (SELECT DISTINCT ON (account_id, user_id) account_id, user_id, status, created_at
                       FROM done WHERE state = 'success'
                       ORDER BY account_id, user_id, created_at DESC) d
                 WHERE u.account_id = d.account_id AND u.id = d.user_id
                   AND (u.status_set_at IS NULL OR u.status_set_at <= d.created_at))",
        ),
    };
    let returning = match kind {
        JobKind::Message => "t.id, t.state, t.waited",
        JobKind::StatusUpdate => {
            "t.id, t.state, t.waited, t.account_id, t.user_id, t.status, t.created_at"
        }
    };
    let notified = notify_done(kind, "done");
    format!(
        "WITH input AS (
             SELECT * FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::float8[], $5::jsonb[], $6::text[])
                 AS i(id, attempt, state, retry_secs, error, provider_message_id)),
         done AS (
             UPDATE {t} AS t SET
                 state = i.state, {finished} {extra}
                 due_at = CASE WHEN i.state = 'queued' THEN now() + make_interval(secs => i.retry_secs)
                               ELSE t.due_at END,
                 published = CASE WHEN i.state = 'queued' THEN false ELSE t.published END,
                 publish_lease_until = CASE WHEN i.state = 'queued' THEN NULL ELSE t.publish_lease_until END,
                 last_error = CASE WHEN i.state = '{success}' THEN t.last_error ELSE i.error END,
                 lease_until = NULL, updated_at = now()
             FROM input i
             -- `t.id = ANY($1)` as well: without it the planner, trusting a
             -- young table's statistics, joins by scanning the whole table
             WHERE t.id = i.id AND t.id = ANY($1) AND t.attempts = i.attempt
               AND (t.state = 'sending' OR (t.state = 'queued' AND i.state <> 'queued'))
             RETURNING {returning}){applied},
         recorded AS (
             INSERT INTO delivery_attempts
                 (kind, subject_id, account_id, attempt, provider, outcome, http_status,
                  error_code, error_detail, latency_ms, started_at)
             SELECT $7, a.* FROM unnest($1::uuid[], $8::int8[], $2::int4[], $9::text[], $10::text[],
                                        $11::int4[], $12::text[], $13::text[], $14::int4[],
                                        $15::timestamptz[]) AS a
             -- the same record sent again after a lost reply
             ON CONFLICT (subject_id, attempt) DO NOTHING
             RETURNING subject_id),
         {notified}
         SELECT (SELECT array_agg(id) FROM done), (SELECT array_agg(subject_id) FROM recorded),
                (SELECT count(*) FROM notified)"
    )
}

/// The state a delivered row of `kind` ends in.
fn final_state(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Message => "sent",
        JobKind::StatusUpdate => "success",
    }
}

/// [`record_many`]'s items, one array per column.
#[derive(Default)]
struct RecordColumns {
    id: Vec<Uuid>,
    attempt: Vec<i32>,
    state: Vec<&'static str>,
    retry_secs: Vec<Option<f64>>,
    error: Vec<Option<serde_json::Value>>,
    provider_message_id: Vec<Option<String>>,
    account_id: Vec<i64>,
    provider: Vec<String>,
    outcome: Vec<&'static str>,
    http_status: Vec<Option<i32>>,
    error_code: Vec<Option<String>>,
    error_detail: Vec<Option<String>>,
    latency_ms: Vec<i32>,
    started_at: Vec<DateTime<Utc>>,
}

impl RecordColumns {
    fn of(items: &[(Resolution, Attempt)]) -> Result<Self> {
        let mut c = Self::default();
        for (resolution, attempt) in items {
            let (state, retry_secs, error, provider_message_id) = match resolution {
                Resolution::Done {
                    provider_message_id,
                } => (
                    final_state(attempt.kind),
                    None,
                    None,
                    provider_message_id.as_deref().map(pg_text),
                ),
                Resolution::Retry { after, error } => {
                    ("queued", Some(secs(*after)), Some(error_json(error)?), None)
                }
                Resolution::Failed { error } => ("failed", None, Some(error_json(error)?), None),
            };
            c.id.push(attempt.subject_id);
            c.attempt.push(attempt.attempt);
            c.state.push(state);
            c.retry_secs.push(retry_secs);
            c.error.push(error);
            c.provider_message_id.push(provider_message_id);
            c.account_id.push(attempt.account.0);
            c.provider.push(attempt.provider.clone());
            c.outcome.push(attempt.outcome.as_str());
            c.http_status.push(attempt.http_status);
            c.error_code
                .push(attempt.error_code.as_deref().map(pg_text));
            c.error_detail
                .push(attempt.error_detail.as_deref().map(pg_text));
            c.latency_ms.push(attempt.latency_ms);
            c.started_at.push(attempt.started_at);
        }
        Ok(c)
    }
}

/// Fails a claimed row that is past its retry deadline, without an attempt:
/// no provider call was made, so the history gets no entry, and the claim's
/// increment of `attempts` is taken back (it counts provider calls). Fenced
/// like [`record_many`]: only the claim that `attempt` names may do it, and
/// NOTIFYed on [`DONE_CHANNEL`] as it does. `false`: the row moved on meanwhile.
#[instrument(skip(client, error))]
pub async fn expire(
    client: &impl GenericClient,
    kind: JobKind,
    id: Uuid,
    attempt: i32,
    error: &LastError,
) -> Result<bool> {
    let t = table(kind);
    let finished = match kind {
        JobKind::Message => "failed_at",
        JobKind::StatusUpdate => "completed_at",
    };
    let notified = notify_done(kind, "done");
    let sql = format!(
        "WITH done AS (
             UPDATE {t} SET state = 'failed', {finished} = now(), last_error = $3,
                            attempts = attempts - 1, updated_at = now(), lease_until = NULL
             WHERE id = $1 AND state = 'sending' AND attempts = $2
             RETURNING id, state, waited),
         {notified}
         SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM notified)"
    );
    let statement = client.prepare_cached(&sql).await?;
    let error = error_json(error)?;
    let row = client
        .query_one(&statement, &[&id, &attempt, &error])
        .await?;
    Ok(row.get::<_, i64>(0) == 1)
}

/// Text from a provider, made storable: Postgres refuses NUL in text and jsonb.
pub(crate) fn pg_text(raw: &str) -> String {
    raw.replace('\0', "")
}

fn error_json(error: &LastError) -> Result<serde_json::Value> {
    let clean = LastError {
        code: pg_text(&error.code),
        detail: pg_text(&error.detail),
        retryable: error.retryable,
    };
    serde_json::to_value(clean).map_err(corrupt)
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

/// How an attempt ended, as recorded in `delivery_attempts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    Retryable,
    Permanent,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::Retryable => "retryable",
            AttemptOutcome::Permanent => "permanent",
        }
    }
}

/// One delivery attempt, for the record.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub kind: JobKind,
    pub subject_id: Uuid,
    pub account: AccountId,
    pub attempt: i32,
    pub provider: String,
    pub outcome: AttemptOutcome,
    pub http_status: Option<i32>,
    pub error_code: Option<String>,
    pub error_detail: Option<String>,
    pub latency_ms: i32,
    pub started_at: DateTime<Utc>,
}

/// Every attempt recorded for one of `account`'s messages or status updates,
/// oldest first. `None`: the account has no such row (another account's id
/// is as unknown as one that never existed).
#[instrument(skip(client), fields(account_id = %account))]
pub async fn attempts_for(
    client: &impl GenericClient,
    account: AccountId,
    kind: JobKind,
    subject_id: Uuid,
) -> Result<Option<Vec<Attempt>>> {
    let t = table(kind);
    // One row per attempt, or one of NULLs for a row with none yet.
    let sql = format!(
        "SELECT a.kind, a.subject_id, a.account_id, a.attempt, a.provider, a.outcome,
                a.http_status, a.error_code, a.error_detail, a.latency_ms, a.started_at
         FROM {t} s
         LEFT JOIN delivery_attempts a
                ON a.subject_id = s.id AND a.account_id = s.account_id AND a.kind = $3
         WHERE s.id = $1 AND s.account_id = $2
         ORDER BY a.attempt, a.id"
    );
    let statement = client.prepare_cached(&sql).await?;
    let rows = client
        .query(&statement, &[&subject_id, &account.0, &kind.as_str()])
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    rows.iter()
        .filter(|row| row.get::<_, Option<&str>>("kind").is_some())
        .map(attempt_from_row)
        .collect::<Result<_>>()
        .map(Some)
}

fn attempt_from_row(row: &tokio_postgres::Row) -> Result<Attempt> {
    let kind: JobKind = row
        .get::<_, &str>("kind")
        .parse()
        .map_err(|err| corrupt(format!("attempt: {err}")))?;
    let outcome = match row.get::<_, &str>("outcome") {
        "delivered" => AttemptOutcome::Delivered,
        "retryable" => AttemptOutcome::Retryable,
        "permanent" => AttemptOutcome::Permanent,
        other => return Err(corrupt(format!("attempt outcome {other:?}"))),
    };
    Ok(Attempt {
        kind,
        subject_id: row.get("subject_id"),
        account: AccountId(row.get("account_id")),
        attempt: row.get("attempt"),
        provider: row.get("provider"),
        outcome,
        http_status: row.get("http_status"),
        error_code: row.get("error_code"),
        error_detail: row.get("error_detail"),
        latency_ms: row.get("latency_ms"),
        started_at: row.get("started_at"),
    })
}

/// Most rows [`backlog`] counts of one kind and sort: past it, the gauge
/// says "at least this many" and the count stays cheap.
pub const BACKLOG_CAP: i64 = 1_000_000;

/// What waits, by kind: rows queued, unpublished and due (the relay's
/// work), retries waiting for their time, and rows published but not yet
/// delivered. Each count stops at [`BACKLOG_CAP`]; each is one scan of a
/// partial index.
pub async fn backlog(client: &impl GenericClient) -> Result<Vec<(JobKind, &'static str, i64)>> {
    let mut counts = Vec::new();
    for kind in JobKind::ALL {
        let t = table(kind);
        let statement = client
            .prepare_cached(&format!(
                "SELECT
                   (SELECT count(*) FROM (SELECT 1 FROM {t} WHERE state = 'queued' AND NOT published
                                          AND due_at <= now() LIMIT $1) d),
                   (SELECT count(*) FROM (SELECT 1 FROM {t} WHERE state = 'queued' AND NOT published
                                          AND due_at > now() LIMIT $1) r),
                   (SELECT count(*) FROM (SELECT 1 FROM {t} WHERE state = 'queued' AND published
                                          LIMIT $1) p)"
            ))
            .await?;
        let row = client.query_one(&statement, &[&BACKLOG_CAP]).await?;
        counts.push((kind, "due", row.get(0)));
        counts.push((kind, "retry", row.get(1)));
        counts.push((kind, "published", row.get(2)));
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use kurir_core::{MessageStatus, StatusUpdateState};

    use super::*;

    #[test]
    fn a_done_payload_names_each_row_and_its_state() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let rows = done_rows(&format!("message {a}:sent {b}:failed")).unwrap();
        assert_eq!(
            rows,
            vec![
                Done {
                    kind: JobKind::Message,
                    id: a,
                    state: JobState::Message(MessageStatus::Sent)
                },
                Done {
                    kind: JobKind::Message,
                    id: b,
                    state: JobState::Message(MessageStatus::Failed)
                },
            ]
        );
        let rows = done_rows(&format!("status_update {a}:success")).unwrap();
        assert_eq!(
            rows[0].state,
            JobState::StatusUpdate(StatusUpdateState::Success)
        );
    }

    #[test]
    fn a_done_payload_of_another_shape_is_an_error() {
        let id = Uuid::now_v7();
        for payload in [
            String::new(),
            format!("parcel {id}:sent"),
            format!("message {id}"),
            "message nope:sent".to_owned(),
            format!("message {id}:success"),
        ] {
            assert!(done_rows(&payload).is_err(), "{payload:?}");
        }
    }

    #[test]
    fn the_largest_done_payload_fits_a_notify() {
        let id = Uuid::now_v7();
        let entries = vec![format!("{id}:success"); DONE_PER_NOTIFY];
        let payload = format!("{} {}", JobKind::StatusUpdate, entries.join(" "));
        assert!(payload.len() < 8000, "{} bytes", payload.len());
        assert_eq!(done_rows(&payload).unwrap().len(), DONE_PER_NOTIFY);
    }
}
