//! Users: the people an account messages.

use chrono::{DateTime, Utc};
use kurir_core::{AccountId, PhoneNumber, ProfileImage, StatusText, UserId, UserName};
use tokio_postgres::Row;
use tracing::instrument;

use crate::{GenericClient, Result};

#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub seq: i64,
    pub name: UserName,
    pub phone_number: PhoneNumber,
    pub profile_image: Option<ProfileImage>,
    pub status: StatusText,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Until when WhatsApp takes free-form text for this user (24 hours
    /// after they last wrote), if kurir knows when they last did.
    pub window_open_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: UserId,
    pub name: UserName,
    pub phone_number: PhoneNumber,
    pub profile_image: Option<ProfileImage>,
    pub status: StatusText,
}

/// `window_open_until`: 24 hours after the user last wrote to a number
/// kurir sends from, if the receipts webhook heard of it (else NULL).
const COLUMNS: &str = "id, seq, name, phone_number, profile_image, status, created_at, updated_at,
     (SELECT max(c.last_inbound_at) FROM whatsapp_contacts c
      WHERE c.wa_id = substr(users.phone_number, 2)) + interval '24 hours' AS window_open_until";

/// A row of [`COLUMNS`], read by name.
fn from_row(row: &Row) -> User {
    User {
        id: UserId::from_trusted(row.get("id")),
        seq: row.get("seq"),
        name: UserName::from_trusted(row.get("name")),
        phone_number: PhoneNumber::from_trusted(row.get("phone_number")),
        profile_image: row
            .get::<_, Option<String>>("profile_image")
            .map(ProfileImage::from_trusted),
        status: StatusText::from_trusted(row.get("status")),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        window_open_until: row.get("window_open_until"),
    }
}

/// Inserts a user. A duplicate id or phone number is a
/// [`crate::StoreError::Conflict`] naming `users_pkey` or `users_phone_number_key`.
#[instrument(skip(client, user), fields(user_id = %user.id))]
pub async fn insert(
    client: &impl GenericClient,
    account: AccountId,
    user: &NewUser,
) -> Result<User> {
    let sql = format!(
        "INSERT INTO users (account_id, id, name, phone_number, profile_image, status)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING {COLUMNS}"
    );
    let statement = client.prepare_cached(&sql).await?;
    let row = client
        .query_one(
            &statement,
            &[
                &account.0,
                &user.id.as_str(),
                &user.name.as_str(),
                &user.phone_number.as_str(),
                &user.profile_image.as_ref().map(ProfileImage::as_str),
                &user.status.as_str(),
            ],
        )
        .await?;
    Ok(from_row(&row))
}

pub async fn get(
    client: &impl GenericClient,
    account: AccountId,
    id: &UserId,
) -> Result<Option<User>> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE account_id = $1 AND id = $2");
    let statement = client.prepare_cached(&sql).await?;
    let row = client
        .query_opt(&statement, &[&account.0, &id.as_str()])
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// One page of users in creation order, after `after_seq` (exclusive).
pub async fn list(
    client: &impl GenericClient,
    account: AccountId,
    after_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<User>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM users
         WHERE account_id = $1 AND seq > $2
         ORDER BY seq
         LIMIT $3"
    );
    let statement = client.prepare_cached(&sql).await?;
    let rows = client
        .query(&statement, &[&account.0, &after_seq.unwrap_or(0), &limit])
        .await?;
    Ok(rows.iter().map(from_row).collect())
}
