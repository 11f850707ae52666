//! Accounts and their API keys (stored as hashes only).

use chrono::{DateTime, Utc};
use kurir_core::AccountId;
use tracing::instrument;

use crate::{GenericClient, Result};

/// Returns the account called `name`, creating it if needed.
#[instrument(skip(client))]
pub async fn ensure_account(client: &impl GenericClient, name: &str) -> Result<AccountId> {
    let statement = client
        .prepare_cached(
            "WITH inserted AS (
                 INSERT INTO accounts (name) VALUES ($1)
                 ON CONFLICT (name) DO NOTHING
                 RETURNING id
             )
             SELECT id FROM inserted
             UNION ALL
             SELECT id FROM accounts WHERE name = $1
             LIMIT 1",
        )
        .await?;
    let row = client.query_one(&statement, &[&name]).await?;
    Ok(AccountId(row.get(0)))
}

/// What [`insert_key`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyInserted {
    Created,
    /// This very key exists already for this account (an idempotent re-run).
    AlreadyThere,
    /// This very key exists, but was revoked: it stays revoked.
    Revoked,
    /// This very key belongs to another account.
    OtherAccount,
    /// Another key has this id.
    IdTaken,
}

/// Stores a key's hash, unless a key with this id or hash exists already:
/// then says which case it is.
#[instrument(skip(client, key_hash))]
pub async fn insert_key(
    client: &impl GenericClient,
    account: AccountId,
    key_id: &str,
    key_hash: &[u8],
) -> Result<KeyInserted> {
    let statement = client
        .prepare_cached(
            "INSERT INTO api_keys (id, account_id, key_hash) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .await?;
    let inserted = client
        .execute(&statement, &[&key_id, &account.0, &key_hash])
        .await?;
    if inserted == 1 {
        return Ok(KeyInserted::Created);
    }
    let existing = client
        .query_opt(
            "SELECT key_hash = $2, account_id = $3, revoked_at IS NOT NULL FROM api_keys
             WHERE id = $1 OR key_hash = $2
             ORDER BY id = $1 DESC LIMIT 1",
            &[&key_id, &key_hash, &account.0],
        )
        .await?;
    Ok(
        match existing.map(|row| (row.get(0), row.get(1), row.get(2))) {
            Some((true, true, false)) => KeyInserted::AlreadyThere,
            Some((true, true, true)) => KeyInserted::Revoked,
            Some((true, false, _)) => KeyInserted::OtherAccount,
            // Another key holds the id (or raced us away).
            Some((false, _, _)) | None => KeyInserted::IdTaken,
        },
    )
}

/// The account a live key belongs to.
pub async fn account_for_key(
    client: &impl GenericClient,
    key_hash: &[u8],
) -> Result<Option<AccountId>> {
    let statement = client
        .prepare_cached(
            "SELECT account_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .await?;
    let row = client.query_opt(&statement, &[&key_hash]).await?;
    Ok(row.map(|row| AccountId(row.get(0))))
}

/// Revokes a key; false if there is no live key with this id.
#[instrument(skip(client))]
pub async fn revoke_key(client: &impl GenericClient, key_id: &str) -> Result<bool> {
    let revoked = client
        .execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
            &[&key_id],
        )
        .await?;
    Ok(revoked == 1)
}

#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub key_id: String,
    pub account: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

pub async fn list_keys(client: &impl GenericClient) -> Result<Vec<KeyInfo>> {
    let rows = client
        .query(
            "SELECT k.id, a.name, k.created_at, k.revoked_at
             FROM api_keys k JOIN accounts a ON a.id = k.account_id
             ORDER BY a.name, k.created_at",
            &[],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| KeyInfo {
            key_id: row.get(0),
            account: row.get(1),
            created_at: row.get(2),
            revoked_at: row.get(3),
        })
        .collect())
}
