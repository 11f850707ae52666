//! Reading the pipeline: an account's history of attempts for one row
//! ([`attempts_for`]) and the backlog gauge ([`backlog`]).

use chrono::{DateTime, Utc};
use kurir_core::{AccountId, JobKind};
use tracing::instrument;
use uuid::Uuid;

use crate::{GenericClient, Result, columns::table, corrupt};

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

/// One attempt as the history holds it (what `GET …/attempts` shows).
#[derive(Debug, Clone)]
pub struct AttemptRecord {
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
) -> Result<Option<Vec<AttemptRecord>>> {
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

fn attempt_from_row(row: &tokio_postgres::Row) -> Result<AttemptRecord> {
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
    Ok(AttemptRecord {
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
