//! Receipts from WhatsApp: status notifications (`sent`, `delivered`, `read`,
//! `failed`) applied to messages, and incoming messages recorded as a
//! user's last inbound time (it opens WhatsApp's 24-hour window).
//!
//! A message only moves forward: `sent → delivered → read`; `failed` only
//! from `sent` (or before it: a row a worker still holds, or a retry
//! waiting after an answer that was lost, which the receipt proves Meta
//! took). Duplicates and receipts out of order change nothing, and a whole
//! webhook's receipts are applied in one statement.

use chrono::{DateTime, Utc};
use kurir_core::{JobKind, LastError};
use tokio_postgres::error::SqlState;
use tracing::instrument;
use uuid::Uuid;

use crate::{
    GenericClient, Result, StoreError, columns::pg_text as clean, corrupt, pipeline::notify_done,
};

/// What a status notification says happened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiptStatus {
    /// WhatsApp took it (the provider's answer says so too).
    Sent,
    Delivered,
    /// Read, or a voice message played.
    Read,
    Failed,
}

impl ReceiptStatus {
    /// The rank the statement works with: forward is up; failed is apart.
    fn rank(self) -> i32 {
        match self {
            ReceiptStatus::Failed => -1,
            ReceiptStatus::Sent => 1,
            ReceiptStatus::Delivered => 2,
            ReceiptStatus::Read => 3,
        }
    }
}

/// One status of one message, as a webhook carried it.
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    /// `metadata.phone_number_id`: the number the message went out from.
    pub phone_number_id: String,
    /// `biz_opaque_callback_data`, when it is a kurir message id.
    pub message_id: Option<Uuid>,
    /// The `wamid`.
    pub wamid: Option<String>,
    pub status: ReceiptStatus,
    /// The receipt's own time (`timestamp`).
    pub at: DateTime<Utc>,
    /// For `failed`: Meta's code and detail.
    pub error: Option<LastError>,
}

/// What [`apply`] did with receipts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// For each receipt, in order, the message it named (sent from its
    /// number); `None`: no such message (sent by something else from the
    /// same number, or by a kurir that did not record the number yet).
    pub matched: Vec<Option<Uuid>>,
    /// The messages that changed (state or a timestamp).
    pub changed: std::collections::HashSet<Uuid>,
}

/// States by rank, as the statement's `(ARRAY[…])[rank]`.
const FORWARD: &str = "(ARRAY['sent', 'delivered', 'read'])";

/// The statement of [`apply`]. Input: one array per column; a receipt
/// matches a message sent from its number by kurir's id or by the wamid
/// (kurir's id first). Receipts of one message are folded (highest rank,
/// earliest time of each kind); rows are locked in id order, so two
/// webhooks about the same messages queue instead of deadlocking; every
/// new value is computed from the row as the UPDATE finds it (a concurrent
/// receipt or worker record is seen, never undone).
fn apply_sql() -> String {
    // The row's rank: 0 before WhatsApp took it, then 1–3.
    let cur =
        "CASE m.state WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 ELSE 0 END";
    // Receipts may touch it: sent or further (not failed), held by a
    // worker, or waiting for a retry after a provider call.
    let open = "(m.state IN ('sent', 'delivered', 'read', 'sending') OR (m.state = 'queued' AND m.attempts > 0))";
    // A receipt's time, never before the message was sent: Meta's are
    // whole seconds (and its clock is not ours), so `delivered` would
    // otherwise often show a moment before `sent`.
    let after_sent =
        |at: &str| format!("(CASE WHEN {at} IS NOT NULL THEN GREATEST({at}, m.sent_at) END)");
    let (a_delivered, a_read, a_failed) = (
        after_sent("a.delivered"),
        after_sent("a.read"),
        after_sent("a.failed"),
    );
    let pos = format!("GREATEST({cur}, COALESCE(a.rank, 0))");
    let fails = format!("({open} AND a.failed IS NOT NULL AND {pos} <= 1)");
    let next = format!(
        "CASE WHEN NOT {open} THEN m.state
              WHEN {fails} THEN 'failed'
              WHEN {pos} > {cur} THEN {FORWARD}[{pos}]
              ELSE m.state END"
    );
    let delivered = format!(
        "CASE WHEN {open} AND NOT {fails}
              THEN COALESCE(LEAST(m.delivered_at, {a_delivered}), LEAST(m.read_at, {a_read}))
              ELSE m.delivered_at END"
    );
    let read = format!(
        "CASE WHEN {open} AND NOT {fails} THEN LEAST(m.read_at, {a_read}) ELSE m.read_at END"
    );
    // Leaving queued/sending: the worker's claim or lease no longer holds.
    let leaving = format!("({open} AND {cur} = 0 AND ({fails} OR {pos} > 0))");
    let notified = notify_done(JobKind::Message, "done");
    format!(
        "WITH input AS (
             SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::int4[],
                                  $5::timestamptz[], $6::jsonb[])
                 WITH ORDINALITY AS i(phone_number_id, cb, wamid, rank, at, error, ord)),
         found AS (
             SELECT DISTINCT ON (i.ord) i.ord, m.id, i.wamid, i.rank, i.at, i.error
             FROM input i
             JOIN messages m ON m.sender_id = i.phone_number_id
                            AND (m.id = i.cb OR m.provider_message_id = i.wamid)
             WHERE m.id = ANY($2) OR m.provider_message_id = ANY($3)
             ORDER BY i.ord, m.id = i.cb DESC),
         agg AS (
             SELECT id,
                    max(rank) FILTER (WHERE rank > 0) AS rank,
                    min(at) FILTER (WHERE rank > 0) AS first_at,
                    min(at) FILTER (WHERE rank = 2) AS delivered,
                    min(at) FILTER (WHERE rank = 3) AS read,
                    min(at) FILTER (WHERE rank = -1) AS failed,
                    (array_agg(error ORDER BY at) FILTER (WHERE rank = -1))[1] AS error,
                    (array_agg(wamid) FILTER (WHERE wamid IS NOT NULL))[1] AS wamid
             FROM found GROUP BY id),
         locked AS (
             SELECT m.id FROM messages m WHERE m.id IN (SELECT id FROM agg)
             ORDER BY m.id FOR UPDATE),
         done AS (
             UPDATE messages m SET
                 state = {next},
                 sent_at = CASE WHEN {leaving} AND NOT {fails} THEN COALESCE(m.sent_at, a.first_at)
                                ELSE m.sent_at END,
                 delivered_at = {delivered},
                 read_at = {read},
                 failed_at = CASE WHEN {fails} THEN {a_failed} ELSE m.failed_at END,
                 last_error = CASE WHEN {fails} THEN a.error
                                   WHEN {leaving} THEN NULL ELSE m.last_error END,
                 provider_message_id = CASE WHEN {open} THEN COALESCE(m.provider_message_id, a.wamid)
                                            ELSE m.provider_message_id END,
                 lease_until = CASE WHEN {leaving} THEN NULL ELSE m.lease_until END,
                 publish_lease_until = CASE WHEN {leaving} THEN NULL ELSE m.publish_lease_until END,
                 updated_at = now()
             FROM agg a, locked l
             WHERE m.id = a.id AND l.id = a.id
               AND ({next} IS DISTINCT FROM m.state
                    OR {delivered} IS DISTINCT FROM m.delivered_at
                    OR {read} IS DISTINCT FROM m.read_at)
             RETURNING m.id, m.state, m.waited),
         {notified}
         SELECT (SELECT array_agg(id) FROM done),
                (SELECT array_agg(ord) FROM found), (SELECT array_agg(id) FROM found),
                (SELECT count(*) FROM notified)"
    )
}

/// Applies receipts (a webhook's, or several webhooks' at once) in one
/// statement, retried once if Postgres picked it as a deadlock's victim
/// against a worker's record.
#[instrument(skip_all, fields(count = receipts.len()))]
pub async fn apply(client: &impl GenericClient, receipts: &[Receipt]) -> Result<Applied> {
    if receipts.is_empty() {
        return Ok(Applied::default());
    }
    let mut phone_number_id = Vec::with_capacity(receipts.len());
    let mut cb = Vec::with_capacity(receipts.len());
    let mut wamid = Vec::with_capacity(receipts.len());
    let mut rank = Vec::with_capacity(receipts.len());
    let mut at = Vec::with_capacity(receipts.len());
    let mut error = Vec::with_capacity(receipts.len());
    for receipt in receipts {
        phone_number_id.push(clean(&receipt.phone_number_id));
        cb.push(receipt.message_id);
        wamid.push(receipt.wamid.as_deref().map(clean));
        rank.push(receipt.status.rank());
        at.push(receipt.at);
        error.push(
            receipt
                .error
                .as_ref()
                .map(|e| {
                    serde_json::to_value(LastError {
                        code: clean(&e.code),
                        detail: clean(&e.detail),
                        retryable: e.retryable,
                    })
                })
                .transpose()
                .map_err(corrupt)?,
        );
    }
    let statement = client.prepare_cached(&apply_sql()).await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
        [&phone_number_id, &cb, &wamid, &rank, &at, &error];
    let mut tries = 0;
    let row = loop {
        tries += 1;
        match client.query_one(&statement, &params).await {
            Ok(row) => break row,
            Err(err) if tries < 2 && err.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) => {
                tracing::debug!("receipts lost a deadlock; applying them again");
            }
            Err(err) => return Err(StoreError::from(err)),
        }
    };
    let changed: Vec<Uuid> = row.get::<_, Option<Vec<Uuid>>>(0).unwrap_or_default();
    let ords: Vec<i64> = row.get::<_, Option<Vec<i64>>>(1).unwrap_or_default();
    let ids: Vec<Uuid> = row.get::<_, Option<Vec<Uuid>>>(2).unwrap_or_default();
    let mut matched = vec![None; receipts.len()];
    for (ord, id) in ords.into_iter().zip(ids) {
        // WITH ORDINALITY counts from 1
        let slot = usize::try_from(ord - 1)
            .ok()
            .and_then(|i| matched.get_mut(i))
            .ok_or_else(|| corrupt(format!("receipt ordinal {ord} of {}", receipts.len())))?;
        *slot = Some(id);
    }
    Ok(Applied {
        matched,
        changed: changed.into_iter().collect(),
    })
}

/// An incoming message: who wrote to which business number, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub phone_number_id: String,
    /// The user's WhatsApp id (their phone number's digits), when Meta
    /// sent it.
    pub wa_id: Option<String>,
    /// Their business-scoped user id, when Meta sent it.
    pub user_id: Option<String>,
    pub at: DateTime<Utc>,
}

/// Records incoming messages as their users' last inbound time, in one
/// statement: by `wa_id` (created or moved forward), or, for a message
/// that carries only a business-scoped id, on the contact known by it.
/// Answers how many contacts it recorded; a message of a user known by
/// neither id is not recorded.
#[instrument(skip_all, fields(count = inbound.len()))]
pub async fn record_inbound(client: &impl GenericClient, inbound: &[Inbound]) -> Result<u64> {
    if inbound.is_empty() {
        return Ok(0);
    }
    let phone_number_id: Vec<String> = inbound.iter().map(|i| clean(&i.phone_number_id)).collect();
    let wa_id: Vec<Option<String>> = inbound
        .iter()
        .map(|i| i.wa_id.as_deref().map(clean))
        .collect();
    let user_id: Vec<Option<String>> = inbound
        .iter()
        .map(|i| i.user_id.as_deref().map(clean))
        .collect();
    let at: Vec<DateTime<Utc>> = inbound.iter().map(|i| i.at).collect();
    let statement = client
        .prepare_cached(
            "WITH input AS (
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
                     AS i(phone_number_id, wa_id, user_id, at)),
             by_wa_id AS (
                 INSERT INTO whatsapp_contacts AS c (phone_number_id, wa_id, user_id, last_inbound_at)
                 SELECT DISTINCT ON (phone_number_id, wa_id) phone_number_id, wa_id, user_id, at
                 FROM input WHERE wa_id IS NOT NULL
                 ORDER BY phone_number_id, wa_id, at DESC
                 ON CONFLICT (phone_number_id, wa_id) DO UPDATE SET
                     last_inbound_at = GREATEST(c.last_inbound_at, excluded.last_inbound_at),
                     user_id = COALESCE(excluded.user_id, c.user_id),
                     updated_at = now()
                 RETURNING 1),
             by_user_id AS (
                 UPDATE whatsapp_contacts c SET
                     last_inbound_at = GREATEST(c.last_inbound_at, i.at), updated_at = now()
                 FROM (SELECT phone_number_id, user_id, max(at) AS at FROM input
                       WHERE wa_id IS NULL AND user_id IS NOT NULL
                       GROUP BY phone_number_id, user_id) i
                 WHERE c.phone_number_id = i.phone_number_id AND c.user_id = i.user_id
                 RETURNING 1)
             SELECT (SELECT count(*) FROM by_wa_id) + (SELECT count(*) FROM by_user_id)",
        )
        .await?;
    let row = client
        .query_one(&statement, &[&phone_number_id, &wa_id, &user_id, &at])
        .await?;
    Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
}

/// When the user with WhatsApp id `wa_id` last wrote to `phone_number_id`,
/// if kurir heard of it.
pub async fn last_inbound(
    client: &impl GenericClient,
    phone_number_id: &str,
    wa_id: &str,
) -> Result<Option<DateTime<Utc>>> {
    let statement = client
        .prepare_cached(
            "SELECT last_inbound_at FROM whatsapp_contacts
             WHERE phone_number_id = $1 AND wa_id = $2",
        )
        .await?;
    Ok(client
        .query_opt(&statement, &[&phone_number_id, &wa_id])
        .await?
        .map(|row| row.get(0)))
}
