//! Status updates as the API sees them: accept and read.

use chrono::{DateTime, Utc};
use kurir_core::{
    AccountId, JobKind, LastError, StatusText, StatusUpdateId, StatusUpdateState, TraceContext,
    UserId,
};
use tokio_postgres::Row;
use tracing::instrument;

use crate::{
    GenericClient, Result, corrupt,
    messages::last_error,
    pipeline::{Accepted, AcceptedRow, Publishing, insert_accepted},
};

#[derive(Debug, Clone)]
pub struct StatusUpdate {
    pub id: StatusUpdateId,
    pub user_id: UserId,
    pub status: StatusText,
    pub state: StatusUpdateState,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<LastError>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// As for messages (see `messages::COLUMNS`): `last_error` is not shown
/// once the update succeeded.
const COLUMNS: &str = "s.id, s.user_id, s.status, s.state, s.attempts,
     CASE WHEN s.state = 'queued' AND s.attempts > 0 THEN s.due_at END AS next_attempt_at,
     CASE WHEN s.state <> 'success' THEN s.last_error END AS last_error,
     s.created_at, s.updated_at, s.completed_at";

/// A row of [`COLUMNS`], read by name.
fn from_row(row: &Row) -> Result<StatusUpdate> {
    Ok(StatusUpdate {
        id: StatusUpdateId(row.get("id")),
        user_id: UserId::from_trusted(row.get("user_id")),
        status: StatusText::from_trusted(row.get("status")),
        state: row.get::<_, &str>("state").parse().map_err(corrupt)?,
        attempts: row.get("attempts"),
        next_attempt_at: row.get("next_attempt_at"),
        last_error: last_error(row.get("last_error"))?,
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        completed_at: row.get("completed_at"),
    })
}

/// One status update to accept, for [`insert_many`].
#[derive(Debug, Clone)]
pub struct NewStatusUpdate {
    pub id: StatusUpdateId,
    pub account: AccountId,
    pub user: UserId,
    pub status: StatusText,
    /// A request waits for its outcome (`Prefer: wait`).
    pub waited: bool,
    /// The trace of the request (carried to the worker).
    pub trace: Option<TraceContext>,
}

/// Accepts many status updates in one statement, as
/// [`crate::messages::insert_many`] does messages: returns what is to be
/// published of those stored (an update whose user does not exist is not).
#[instrument(skip_all, fields(count = updates.len(), ?publishing))]
pub async fn insert_many(
    client: &impl GenericClient,
    updates: &[NewStatusUpdate],
    publishing: Publishing,
) -> Result<Vec<Accepted>> {
    let rows = updates.iter().map(|u| AcceptedRow {
        id: u.id.0,
        account: u.account,
        user: u.user.as_str(),
        text: Some(u.status.as_str()),
        template: None,
        waited: u.waited,
        trace: u.trace,
    });
    insert_accepted(client, JobKind::StatusUpdate, rows, publishing).await
}

pub async fn get(
    client: &impl GenericClient,
    account: AccountId,
    id: StatusUpdateId,
) -> Result<Option<StatusUpdate>> {
    let sql =
        format!("SELECT {COLUMNS} FROM status_updates s WHERE s.account_id = $1 AND s.id = $2");
    let statement = client.prepare_cached(&sql).await?;
    let row = client.query_opt(&statement, &[&account.0, &id.0]).await?;
    row.as_ref().map(from_row).transpose()
}
