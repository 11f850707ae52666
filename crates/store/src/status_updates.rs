//! Status updates as the API sees them: accept and read.

use chrono::{DateTime, Utc};
use kurir_core::{
    AccountId, JobKind, LastError, StatusText, StatusUpdateId, StatusUpdateState, UserId,
};
use tokio_postgres::Row;
use tracing::instrument;

use crate::{
    GenericClient, Result, corrupt,
    messages::last_error,
    pipeline::{Publishable, Publishing, notify_relays},
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
     CASE WHEN s.state = 'queued' AND s.attempts > 0 THEN s.due_at END,
     CASE WHEN s.state <> 'success' THEN s.last_error END,
     s.created_at, s.updated_at, s.completed_at";

fn from_row(row: &Row) -> Result<StatusUpdate> {
    Ok(StatusUpdate {
        id: StatusUpdateId(row.get(0)),
        user_id: UserId::from_trusted(row.get(1)),
        status: StatusText::from_trusted(row.get(2)),
        state: row.get::<_, &str>(3).parse().map_err(corrupt)?,
        attempts: row.get(4),
        next_attempt_at: row.get(5),
        last_error: last_error(row.get(6))?,
        created_at: row.get(7),
        updated_at: row.get(8),
        completed_at: row.get(9),
    })
}

/// Accepts a status update for `user` (as [`crate::messages::insert_many`]
/// does messages), with what is to be published. `None`: no such user.
#[instrument(skip(client, status), fields(account_id = %account, user_id = %user))]
pub async fn insert(
    client: &impl GenericClient,
    account: AccountId,
    user: &UserId,
    id: StatusUpdateId,
    status: &StatusText,
    publishing: Publishing,
) -> Result<Option<(StatusUpdate, Publishable)>> {
    let sql = format!(
        "INSERT INTO status_updates AS s (id, account_id, user_id, status, published, published_at)
         SELECT $1, u.account_id, u.id, $4, $5, CASE WHEN $5 THEN now() END
         FROM users u WHERE u.account_id = $2 AND u.id = $3
         RETURNING {COLUMNS}"
    );
    let statement = client.prepare_cached(&sql).await?;
    let row = client
        .query_opt(
            &statement,
            &[
                &id.0,
                &account.0,
                &user.as_str(),
                &status.as_str(),
                &publishing.published(),
            ],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    if publishing == Publishing::ByRelay {
        notify_relays(client).await?;
    }
    let publishable = Publishable::accepted(JobKind::StatusUpdate, id.0, account);
    Ok(Some((from_row(&row)?, publishable)))
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
