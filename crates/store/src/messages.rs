//! Messages as the API sees them: accept, read, list.

use chrono::{DateTime, Utc};
use kurir_core::{
    AccountId, Content, JobKind, LastError, MessageId, MessageStatus, TraceContext, UserId,
};
use tokio_postgres::Row;
use tracing::instrument;

use crate::{
    GenericClient, Result,
    columns::{content, content_columns},
    corrupt,
    pipeline::{Accepted, AcceptedRow, Publishing, insert_accepted},
};

#[derive(Debug, Clone)]
pub struct Message {
    pub id: MessageId,
    pub user_id: UserId,
    pub content: Content,
    pub status: MessageStatus,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_error: Option<LastError>,
    pub provider_message_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub read_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
}

/// `next_attempt_at` is shown only for a retry waiting for its time, and
/// `last_error` only while it explains the state: a retry waiting or in
/// flight, or `failed`. Once the provider took the message the error of an
/// earlier attempt explains nothing; it stays in the attempt history.
const COLUMNS: &str = "m.id, m.user_id, m.body, m.template, m.state, m.attempts,
     CASE WHEN m.state = 'queued' AND m.attempts > 0 THEN m.due_at END AS next_attempt_at,
     CASE WHEN m.state NOT IN ('sent', 'delivered', 'read') THEN m.last_error END AS last_error,
     m.provider_message_id, m.created_at, m.updated_at,
     m.sent_at, m.delivered_at, m.read_at, m.failed_at";

pub(crate) fn last_error(value: Option<serde_json::Value>) -> Result<Option<LastError>> {
    value
        .map(|value| serde_json::from_value(value).map_err(corrupt))
        .transpose()
}

/// A row of [`COLUMNS`], read by name.
fn from_row(row: &Row) -> Result<Message> {
    Ok(Message {
        id: MessageId(row.get("id")),
        user_id: UserId::from_trusted(row.get("user_id")),
        content: content(row.get("body"), row.get("template"))?,
        status: row.get::<_, &str>("state").parse().map_err(corrupt)?,
        attempts: row.get("attempts"),
        next_attempt_at: row.get("next_attempt_at"),
        last_error: last_error(row.get("last_error"))?,
        provider_message_id: row.get("provider_message_id"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        sent_at: row.get("sent_at"),
        delivered_at: row.get("delivered_at"),
        read_at: row.get("read_at"),
        failed_at: row.get("failed_at"),
    })
}

/// One message to accept, for [`insert_many`].
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: MessageId,
    pub account: AccountId,
    pub user: UserId,
    pub content: Content,
    /// A request waits for its outcome (`Prefer: wait`).
    pub waited: bool,
    /// The trace of the request (carried to the worker).
    pub trace: Option<TraceContext>,
}

/// Accepts many messages in one statement (one commit: the group commit of
/// concurrent requests). Returns what is to be published of the messages
/// stored; a message whose user does not exist in its account is not.
#[instrument(skip_all, fields(count = messages.len(), ?publishing))]
pub async fn insert_many(
    client: &impl GenericClient,
    messages: &[NewMessage],
    publishing: Publishing,
) -> Result<Vec<Accepted>> {
    let rows = messages.iter().map(|m| {
        let (text, template) = content_columns(&m.content);
        AcceptedRow {
            id: m.id.0,
            account: m.account,
            user: m.user.as_str(),
            text,
            template,
            waited: m.waited,
            trace: m.trace,
        }
    });
    insert_accepted(client, JobKind::Message, rows, publishing).await
}

pub async fn get(
    client: &impl GenericClient,
    account: AccountId,
    id: MessageId,
) -> Result<Option<Message>> {
    let sql = format!("SELECT {COLUMNS} FROM messages m WHERE m.account_id = $1 AND m.id = $2");
    let statement = client.prepare_cached(&sql).await?;
    let row = client.query_opt(&statement, &[&account.0, &id.0]).await?;
    row.as_ref().map(from_row).transpose()
}

/// One page of a user's messages, newest first, older than `before` (exclusive).
pub async fn list_for_user(
    client: &impl GenericClient,
    account: AccountId,
    user: &UserId,
    status: Option<MessageStatus>,
    before: Option<MessageId>,
    limit: i64,
) -> Result<Vec<Message>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM messages m
         WHERE m.account_id = $1 AND m.user_id = $2
           AND ($3::text IS NULL OR m.state = $3)
           -- one index range whether or not a cursor is given (plans are
           -- generic: an `IS NULL OR` would leave the cursor a filter, so a
           -- deep page would read every newer row again)
           AND m.id < COALESCE($4::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff')
         ORDER BY m.id DESC
         LIMIT $5"
    );
    let statement = client.prepare_cached(&sql).await?;
    let rows = client
        .query(
            &statement,
            &[
                &account.0,
                &user.as_str(),
                &status.map(MessageStatus::as_str),
                &before.map(|id| id.0),
                &limit,
            ],
        )
        .await?;
    rows.iter().map(from_row).collect()
}
