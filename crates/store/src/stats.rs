//! What `kurir stats` reads from Postgres: messages and status updates by
//! state, retries waiting, the oldest queued message.
//!
//! These are counts over whole tables (no index serves "every row by
//! state"), for an operator now and then, not for a dashboard polling every
//! second: the metrics endpoints are for that. They run in one read-only
//! snapshot, so the numbers add up with each other.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kurir_core::AccountId;
use tracing::instrument;

use crate::{GenericClient, Result};

/// Counts of one table's rows by state, with the retries among the queued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Every state that has rows (states with none are absent).
    pub by_state: BTreeMap<String, i64>,
    /// Queued rows that were tried before (`attempts > 0`): retries waiting
    /// for their time in `due_at`.
    pub retries_waiting: i64,
}

impl StateCounts {
    pub fn get(&self, state: &str) -> i64 {
        self.by_state.get(state).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub messages: StateCounts,
    pub status_updates: StateCounts,
    /// When the oldest message still `queued` was accepted, and now, by
    /// Postgres' clock.
    pub oldest_queued_message: Option<DateTime<Utc>>,
    pub now: Option<DateTime<Utc>>,
}

const MESSAGES: &str =
    "SELECT state, count(*), count(*) FILTER (WHERE state = 'queued' AND attempts > 0)
     FROM messages WHERE $1::int8 IS NULL OR account_id = $1 GROUP BY state";
const STATUS_UPDATES: &str =
    "SELECT state, count(*), count(*) FILTER (WHERE state = 'queued' AND attempts > 0)
     FROM status_updates WHERE $1::int8 IS NULL OR account_id = $1 GROUP BY state";
const OLDEST: &str = "SELECT min(created_at), now() FROM messages
     WHERE state = 'queued' AND ($1::int8 IS NULL OR account_id = $1)";

async fn counts(
    client: &impl GenericClient,
    sql: &str,
    account: Option<i64>,
) -> Result<StateCounts> {
    let statement = client.prepare_cached(sql).await?;
    let mut counts = StateCounts::default();
    for row in client.query(&statement, &[&account]).await? {
        let state: String = row.get(0);
        counts.by_state.insert(state, row.get(1));
        counts.retries_waiting += row.get::<_, i64>(2);
    }
    Ok(counts)
}

/// The counts of one account, or of all of them. Pass a transaction (see
/// [`read_snapshot`]) for numbers that agree with each other.
#[instrument(skip(client))]
pub async fn collect(client: &impl GenericClient, account: Option<AccountId>) -> Result<Stats> {
    let account = account.map(|account| account.0);
    let messages = counts(client, MESSAGES, account).await?;
    let status_updates = counts(client, STATUS_UPDATES, account).await?;
    let statement = client.prepare_cached(OLDEST).await?;
    let row = client.query_one(&statement, &[&account]).await?;
    Ok(Stats {
        messages,
        status_updates,
        oldest_queued_message: row.get(0),
        now: row.get(1),
    })
}

/// Makes `transaction` one read-only snapshot that may take up to `limit`
/// seconds per statement (counting a large table takes longer than the
/// API's statements may).
pub async fn read_snapshot(
    transaction: &crate::Transaction<'_>,
    limit: std::time::Duration,
) -> Result<()> {
    transaction
        .batch_execute(&format!(
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;
             SET LOCAL statement_timeout = {};
             SET LOCAL enable_seqscan = on",
            limit.as_millis()
        ))
        .await?;
    Ok(())
}
