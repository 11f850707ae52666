//! Idempotency keys: the first response to a creating request, kept for
//! [`TTL`] under the key the client sent with it (see migration V4).
//!
//! A key is claimed ([`claim_many`]) in the same transaction that stores the
//! row it answers for, so a key exists exactly when its row does: a
//! concurrent request with the same key waits on the claim (the primary
//! key's lock) until the first commits, and then finds it taken. A claim
//! whose row could not be stored is taken back ([`forget_many`]) before the
//! commit. An expired key counts as absent and is claimed anew; the
//! cleanup ([`delete_expired`]) removes expired keys in batches.

use std::time::Duration;

use kurir_core::AccountId;
use tracing::instrument;

use crate::{GenericClient, Result, corrupt};

/// How long a key is remembered.
pub const TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// What a key was sent with; keys of different scopes never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The `Idempotency-Key` header of one request.
    Request,
    /// A batch item's own `idempotency_key`.
    Item,
    /// An item of a batch sent with an `Idempotency-Key` header (the key is
    /// the header's and the item's position).
    BatchItem,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Request => "request",
            Scope::Item => "item",
            Scope::BatchItem => "batch_item",
        }
    }
}

/// One key of one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub account: AccountId,
    pub scope: Scope,
    pub key: String,
}

/// A response as it was sent, to send again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub location: Option<String>,
}

/// What a key holds: the request's fingerprint and its first response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub fingerprint: Vec<u8>,
    pub response: Response,
}

/// A key to claim, with the request's fingerprint and the response to keep.
#[derive(Debug, Clone)]
pub struct Claim {
    pub key: Key,
    pub fingerprint: [u8; 32],
    pub response: Response,
}

fn ttl_secs() -> f64 {
    TTL.as_secs_f64()
}

/// Column arrays of `keys`, for `unnest`.
fn key_columns<'a>(keys: impl Iterator<Item = &'a Key>) -> (Vec<i64>, Vec<&'a str>, Vec<&'a str>) {
    let mut accounts = Vec::new();
    let mut scopes = Vec::new();
    let mut names = Vec::new();
    for key in keys {
        accounts.push(key.account.0);
        scopes.push(key.scope.as_str());
        names.push(key.key.as_str());
    }
    (accounts, scopes, names)
}

/// Claims each key that no live request holds; returns, in order, whether
/// each was claimed. Keys must be distinct; they are claimed in their
/// sorted order, so two transactions claiming overlapping keys wait for
/// each other instead of deadlocking. Meant for the transaction that
/// stores the rows the keys answer for: a concurrent claim of the same key
/// waits until that transaction ends.
#[instrument(skip_all, fields(keys = claims.len()))]
pub async fn claim_many(client: &impl GenericClient, claims: &[Claim]) -> Result<Vec<bool>> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let mut order: Vec<usize> = (0..claims.len()).collect();
    order.sort_by(|a, b| claims[*a].key.cmp(&claims[*b].key));
    let (accounts, scopes, names) = key_columns(order.iter().map(|i| &claims[*i].key));
    let fingerprints: Vec<&[u8]> = order.iter().map(|i| &claims[*i].fingerprint[..]).collect();
    let statuses: Vec<i16> = order
        .iter()
        .map(|i| i16::try_from(claims[*i].response.status).unwrap_or(i16::MAX))
        .collect();
    let bodies: Vec<&[u8]> = order
        .iter()
        .map(|i| &claims[*i].response.body[..])
        .collect();
    let locations: Vec<Option<&str>> = order
        .iter()
        .map(|i| claims[*i].response.location.as_deref())
        .collect();
    let statement = client
        .prepare_cached(
            "INSERT INTO idempotency_keys AS k
                 (account_id, scope, key, fingerprint, status, response, location)
             SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::bytea[],
                                  $5::int2[], $6::bytea[], $7::text[])
             ON CONFLICT (account_id, scope, key) DO UPDATE
                 SET fingerprint = EXCLUDED.fingerprint, status = EXCLUDED.status,
                     response = EXCLUDED.response, location = EXCLUDED.location,
                     created_at = now()
                 WHERE k.created_at < now() - make_interval(secs => $8)
             RETURNING account_id, scope, key",
        )
        .await?;
    let rows = client
        .query(
            &statement,
            &[
                &accounts,
                &scopes,
                &names,
                &fingerprints,
                &statuses,
                &bodies,
                &locations,
                &ttl_secs(),
            ],
        )
        .await?;
    let claimed: std::collections::HashSet<(i64, String, String)> = rows
        .iter()
        .map(|row| (row.get("account_id"), row.get("scope"), row.get("key")))
        .collect();
    Ok(claims
        .iter()
        .map(|claim| {
            claimed.contains(&(
                claim.key.account.0,
                claim.key.scope.as_str().to_owned(),
                claim.key.key.clone(),
            ))
        })
        .collect())
}

/// Takes back claims whose rows were not stored after all (the user does
/// not exist): a retry of the same request must be free to store its row.
#[instrument(skip_all, fields(keys = keys.len()))]
pub async fn forget_many(client: &impl GenericClient, keys: &[Key]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let (accounts, scopes, names) = key_columns(keys.iter());
    let statement = client
        .prepare_cached(
            "DELETE FROM idempotency_keys k
             USING unnest($1::int8[], $2::text[], $3::text[]) AS f(account_id, scope, key)
             WHERE k.account_id = f.account_id AND k.scope = f.scope AND k.key = f.key",
        )
        .await?;
    client
        .execute(&statement, &[&accounts, &scopes, &names])
        .await?;
    Ok(())
}

/// What each live key holds, in order (`None`: no live key).
#[instrument(skip_all, fields(keys = keys.len()))]
pub async fn lookup_many(
    client: &impl GenericClient,
    keys: &[Key],
) -> Result<Vec<Option<Recorded>>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (accounts, scopes, names) = key_columns(keys.iter());
    let statement = client
        .prepare_cached(
            "SELECT f.n, k.fingerprint, k.status, k.response, k.location
             FROM unnest($1::int8[], $2::text[], $3::text[]) WITH ORDINALITY
                  AS f(account_id, scope, key, n)
             JOIN idempotency_keys k
               ON k.account_id = f.account_id AND k.scope = f.scope AND k.key = f.key
             WHERE k.created_at >= now() - make_interval(secs => $4)",
        )
        .await?;
    let rows = client
        .query(&statement, &[&accounts, &scopes, &names, &ttl_secs()])
        .await?;
    let mut found = vec![None; keys.len()];
    for row in rows {
        let n: i64 = row.get("n");
        let status: i16 = row.get("status");
        let recorded = Recorded {
            fingerprint: row.get("fingerprint"),
            response: Response {
                status: u16::try_from(status).map_err(corrupt)?,
                body: row.get("response"),
                location: row.get("location"),
            },
        };
        if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| found.get_mut(i)) {
            *slot = Some(recorded);
        }
    }
    Ok(found)
}

/// What one live key holds.
pub async fn lookup(client: &impl GenericClient, key: &Key) -> Result<Option<Recorded>> {
    Ok(lookup_many(client, std::slice::from_ref(key))
        .await?
        .pop()
        .flatten())
}

/// Replaces the response a claimed key keeps (a response known only after
/// the row was stored, or one that waited for the row's outcome).
#[instrument(skip_all)]
pub async fn set_response(
    client: &impl GenericClient,
    key: &Key,
    response: &Response,
) -> Result<()> {
    let statement = client
        .prepare_cached(
            "UPDATE idempotency_keys SET status = $4, response = $5, location = $6
             WHERE account_id = $1 AND scope = $2 AND key = $3",
        )
        .await?;
    let status = i16::try_from(response.status).unwrap_or(i16::MAX);
    client
        .execute(
            &statement,
            &[
                &key.account.0,
                &key.scope.as_str(),
                &key.key,
                &status,
                &response.body,
                &response.location,
            ],
        )
        .await?;
    Ok(())
}

/// Deletes up to `limit` expired keys, oldest first; how many it deleted.
/// Call again while it deletes a full batch.
#[instrument(skip(client))]
pub async fn delete_expired(client: &impl GenericClient, limit: i64) -> Result<u64> {
    let statement = client
        .prepare_cached(
            "DELETE FROM idempotency_keys
             WHERE (account_id, scope, key) IN (
                 SELECT account_id, scope, key FROM idempotency_keys
                 WHERE created_at < now() - make_interval(secs => $1)
                 ORDER BY created_at
                 LIMIT $2)",
        )
        .await?;
    Ok(client.execute(&statement, &[&ttl_secs(), &limit]).await?)
}
