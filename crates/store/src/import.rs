//! Bulk upsert of users (`kurir users import`): one statement per batch of
//! already validated rows, keyed by (account, id).
//!
//! - a new id is inserted;
//! - an existing id whose fields differ is updated (`updated_at = now()`;
//!   `status_set_at = now()` when the status changes, so a status update
//!   accepted before the import and finishing after it does not put its
//!   older text back);
//! - an identical row is not written at all (a re-import changes nothing,
//!   not even `updated_at`);
//! - a row whose phone number another user of the account holds is
//!   rejected, and the others go on.
//!
//! The phone check sees the table as the batch starts: moving a number from
//! one user to another takes two imports (or two batches), never a swap
//! inside one batch.

use std::collections::HashSet;

use kurir_core::{AccountId, ProfileImage};
use tracing::instrument;

use crate::{GenericClient, Result, StoreError, users::NewUser};

/// One validated row of an import, with the line it came from.
#[derive(Debug, Clone)]
pub struct ImportRow {
    pub line: u64,
    pub user: NewUser,
}

/// What became of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowOutcome {
    Created,
    Updated,
    Unchanged,
    /// Not written, for this reason (the phone number is taken, …).
    Rejected(String),
}

/// How many times a batch is tried again when a user created meanwhile
/// (through the API) takes one of its phone numbers between the check and
/// the write; the next try sees that user and rejects the row instead.
const RACE_RETRIES: usize = 3;

/// The account called `name`, if there is one.
#[instrument(skip(client))]
pub async fn account_named(client: &impl GenericClient, name: &str) -> Result<Option<AccountId>> {
    let statement = client
        .prepare_cached("SELECT id FROM accounts WHERE name = $1")
        .await?;
    let row = client.query_opt(&statement, &[&name]).await?;
    Ok(row.map(|row| AccountId(row.get(0))))
}

const UPSERT: &str = "
WITH input AS (
    SELECT *
    FROM unnest($2::int4[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
        AS t(ord, id, name, phone_number, profile_image, status)
),
taken AS (
    SELECT i.ord, u.id AS holder
    FROM input i
    JOIN users u ON u.account_id = $1 AND u.phone_number = i.phone_number AND u.id <> i.id
),
upserted AS (
    INSERT INTO users AS u (account_id, id, name, phone_number, profile_image, status)
    SELECT $1, i.id, i.name, i.phone_number, i.profile_image, i.status
    FROM input i
    WHERE NOT EXISTS (SELECT 1 FROM taken t WHERE t.ord = i.ord)
    ON CONFLICT (account_id, id) DO UPDATE
        SET name = EXCLUDED.name,
            phone_number = EXCLUDED.phone_number,
            profile_image = EXCLUDED.profile_image,
            status = EXCLUDED.status,
            status_set_at = CASE WHEN u.status IS DISTINCT FROM EXCLUDED.status
                                 THEN now() ELSE u.status_set_at END,
            updated_at = now()
        WHERE (u.name, u.phone_number, u.profile_image, u.status)
              IS DISTINCT FROM
              (EXCLUDED.name, EXCLUDED.phone_number, EXCLUDED.profile_image, EXCLUDED.status)
    RETURNING u.id, (u.xmax = 0) AS inserted
)
SELECT i.ord, t.holder, up.inserted
FROM input i
LEFT JOIN taken t ON t.ord = i.ord
LEFT JOIN upserted up ON up.id = i.id";

/// Upserts one batch (about a thousand rows: one round trip) into
/// `account`'s users; one outcome per row, in the order given. Ids and
/// phone numbers should be unique within the batch (the caller checks the
/// whole file); a repeat is rejected here too rather than failing the batch.
#[instrument(skip(client, rows), fields(rows = rows.len()))]
pub async fn upsert_users(
    client: &impl GenericClient,
    account: AccountId,
    rows: &[ImportRow],
) -> Result<Vec<RowOutcome>> {
    let mut outcomes: Vec<Option<RowOutcome>> = vec![None; rows.len()];
    let mut ids = HashSet::new();
    let mut phones = HashSet::new();
    let mut batch = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let user = &row.user;
        if !ids.insert(user.id.as_str()) {
            outcomes[index] = Some(RowOutcome::Rejected("id repeats an earlier row".into()));
        } else if !phones.insert(user.phone_number.as_str()) {
            outcomes[index] = Some(RowOutcome::Rejected(
                "phone_number repeats an earlier row".into(),
            ));
        } else {
            batch.push(index);
        }
    }
    // Each row sent is known by its position in `batch`.
    let ords: Vec<i32> = (0..batch.len())
        .map(|ord| i32::try_from(ord).unwrap_or(i32::MAX))
        .collect();
    let user_ids: Vec<&str> = batch.iter().map(|&i| rows[i].user.id.as_str()).collect();
    let names: Vec<&str> = batch.iter().map(|&i| rows[i].user.name.as_str()).collect();
    let phone_numbers: Vec<&str> = batch
        .iter()
        .map(|&i| rows[i].user.phone_number.as_str())
        .collect();
    let images: Vec<Option<&str>> = batch
        .iter()
        .map(|&i| {
            rows[i]
                .user
                .profile_image
                .as_ref()
                .map(ProfileImage::as_str)
        })
        .collect();
    let statuses: Vec<&str> = batch
        .iter()
        .map(|&i| rows[i].user.status.as_str())
        .collect();

    let statement = client.prepare_cached(UPSERT).await?;
    let mut tries = 0;
    let answer = loop {
        let result = client
            .query(
                &statement,
                &[
                    &account.0,
                    &ords,
                    &user_ids,
                    &names,
                    &phone_numbers,
                    &images,
                    &statuses,
                ],
            )
            .await
            .map_err(StoreError::from);
        match result {
            Err(StoreError::Conflict { constraint })
                if constraint == "users_phone_number_key" && tries < RACE_RETRIES =>
            {
                tries += 1;
            }
            other => break other?,
        }
    };
    // The answer comes in any order.
    for row in &answer {
        let ord: i32 = row.get(0);
        let holder: Option<String> = row.get(1);
        let inserted: Option<bool> = row.get(2);
        let outcome = match (holder, inserted) {
            (Some(holder), _) => RowOutcome::Rejected(format!(
                "phone_number is already used by user {holder} of this account"
            )),
            (None, Some(true)) => RowOutcome::Created,
            (None, Some(false)) => RowOutcome::Updated,
            (None, None) => RowOutcome::Unchanged,
        };
        let index = usize::try_from(ord)
            .ok()
            .and_then(|ord| batch.get(ord))
            .ok_or_else(|| crate::corrupt(format!("the upsert answered for row {ord}")))?;
        outcomes[*index] = Some(outcome);
    }
    outcomes
        .into_iter()
        .zip(rows)
        .map(|(outcome, row)| {
            outcome.ok_or_else(|| {
                crate::corrupt(format!("the upsert gave no answer for line {}", row.line))
            })
        })
        .collect()
}
