//! Delivering, the record side: what each attempt decided for its row and
//! the attempt itself, many rows in one statement ([`record_many`]), or a
//! row failed past its deadline with no provider call ([`expire`]). Both are
//! fenced by `attempts`: an outcome is recorded only if the row is still
//! `sending` at the attempt the writer claimed. The attempt and its
//! resolution are recorded as the worker built them (`kurir_core::attempt`),
//! flattened into columns here and nowhere else ([`RecordColumns`]).

use chrono::{DateTime, Utc};
use kurir_core::{
    JobKind, LastError,
    attempt::{Attempt, Resolution},
};
use tracing::instrument;
use uuid::Uuid;

use crate::{
    GenericClient, Result,
    columns::{error_json, pg_text, secs, table},
    pipeline::done::notify_done,
};

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
/// for are NOTIFYed on [`DONE_CHANNEL`](super::DONE_CHANNEL). Answers one [`Recorded`] per item, in order.
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
    provider: Vec<&'static str>,
    outcome: Vec<&'static str>,
    http_status: Vec<Option<i32>>,
    error_code: Vec<Option<String>>,
    error_detail: Vec<Option<String>>,
    latency_ms: Vec<i32>,
    started_at: Vec<DateTime<Utc>>,
}

impl RecordColumns {
    /// The one place an attempt and its resolution become columns.
    fn of(items: &[(Resolution, Attempt)]) -> Result<Self> {
        let mut c = Self::default();
        for (resolution, attempt) in items {
            let (state, retry_secs) = match resolution {
                Resolution::Done => (final_state(attempt.kind), None),
                Resolution::Retry { after } => ("queued", Some(secs(*after))),
                Resolution::Failed { .. } => ("failed", None),
            };
            let error = attempt.outcome.error();
            c.id.push(attempt.subject_id);
            c.attempt.push(attempt.attempt);
            c.state.push(state);
            c.retry_secs.push(retry_secs);
            c.error.push(
                attempt
                    .last_error(resolution)
                    .map(|e| error_json(&e))
                    .transpose()?,
            );
            c.provider_message_id
                .push(attempt.outcome.provider_message_id().map(pg_text));
            c.account_id.push(attempt.account.0);
            c.provider.push(attempt.provider);
            c.outcome.push(attempt.outcome.as_str());
            c.http_status
                .push(attempt.outcome.http_status().map(i32::from));
            c.error_code.push(error.map(|e| pg_text(&e.code)));
            c.error_detail.push(error.map(|e| pg_text(&e.detail)));
            c.latency_ms.push(attempt.latency_ms());
            c.started_at.push(attempt.started_at);
        }
        Ok(c)
    }
}

/// Fails a claimed row that is past its retry deadline, without an attempt:
/// no provider call was made, so the history gets no entry, and the claim's
/// increment of `attempts` is taken back (it counts provider calls). Fenced
/// like [`record_many`]: only the claim that `attempt` names may do it, and
/// NOTIFYed on [`DONE_CHANNEL`](super::DONE_CHANNEL) as it does. `false`: the row moved on meanwhile.
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
