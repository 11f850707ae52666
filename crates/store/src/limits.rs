//! The per-account intake limit's shared state: each account's own limit
//! (on `accounts`) and its token bucket (`intake_buckets`), from which API
//! processes lease tokens in chunks. The arithmetic of a lease is all here,
//! in one statement, so that any number of API processes share one bucket.

use kurir_core::{AccountId, IntakeLimit};
use tracing::instrument;

use crate::{GenericClient, Result, corrupt};

/// What one [`lease`] found and took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lease {
    /// The account's limit now (its own or the default); a rate of 0 is no
    /// limit, and then nothing was taken or written.
    pub limit: IntakeLimit,
    /// Tokens taken from the bucket for this process: 0 (the bucket could
    /// not cover `need`), or from `need` to `want`.
    pub granted: u64,
    /// What the bucket holds after the lease (refilled up to now).
    pub left: f64,
}

/// Takes tokens from `account`'s bucket for this process, in one statement:
/// brings the bucket up to date (elapsed time × rate, capped at the burst),
/// adds `give_back` (tokens this process leased earlier and did not use),
/// then takes `want` tokens, or as many as there are if fewer, but only if
/// there are at least `need`; otherwise takes none. A bucket is created
/// full at an account's first lease. The account's own limit is read in
/// the same statement, so a change takes effect with the next lease.
#[instrument(skip(client))]
pub async fn lease(
    client: &impl GenericClient,
    account: AccountId,
    default: IntakeLimit,
    need: u64,
    want: u64,
    give_back: u64,
) -> Result<Lease> {
    let statement = client
        .prepare_cached(
            "WITH lim AS (
                 SELECT id,
                        coalesce(intake_rate, $2::integer) AS rate,
                        coalesce(intake_burst, $3::integer) AS burst
                 FROM accounts WHERE id = $1
             ), leased AS (
                 INSERT INTO intake_buckets AS b (account_id, tokens, refilled_at, granted)
                 SELECT lim.id, lim.burst - g.granted, now(), g.granted
                 FROM lim, LATERAL (
                     SELECT CASE WHEN lim.burst >= $4::bigint THEN least($5::bigint, lim.burst) ELSE 0 END AS granted
                 ) g
                 WHERE lim.rate > 0
                 ON CONFLICT (account_id) DO UPDATE SET (tokens, refilled_at, granted) = (
                     SELECT s.available - g.granted, s.at, g.granted
                     FROM lim,
                          -- Statements that started earlier may commit later:
                          -- time never runs backwards in the bucket.
                          LATERAL (SELECT greatest(b.refilled_at, now()) AS at) t,
                          LATERAL (SELECT t.at, least(lim.burst::float8,
                              b.tokens + $6::bigint::float8
                              + lim.rate * extract(epoch FROM t.at - b.refilled_at)::float8
                          ) AS available) s,
                          LATERAL (SELECT CASE WHEN s.available >= $4::bigint
                              THEN least($5::bigint, floor(s.available))::bigint ELSE 0 END AS granted) g
                 )
                 RETURNING b.granted, b.tokens
             )
             SELECT lim.rate, lim.burst, leased.granted, leased.tokens
             FROM lim LEFT JOIN leased ON true",
        )
        .await?;
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let rate = i32::try_from(default.rate).unwrap_or(i32::MAX);
    let burst = i32::try_from(default.burst).unwrap_or(i32::MAX);
    let row = client
        .query_opt(
            &statement,
            &[
                &account.0,
                &rate,
                &burst,
                &count(need),
                &count(want),
                &count(give_back),
            ],
        )
        .await?
        .ok_or_else(|| corrupt(format!("account {account} does not exist")))?;
    let limit = limit_of(row.get("rate"), row.get("burst"))?;
    let granted: Option<i64> = row.get("granted");
    let left: Option<f64> = row.get("tokens");
    Ok(Lease {
        limit,
        granted: u64::try_from(granted.unwrap_or(0)).map_err(corrupt)?,
        left: left.unwrap_or(f64::from(limit.burst)),
    })
}

fn limit_of(rate: i32, burst: i32) -> Result<IntakeLimit> {
    Ok(IntakeLimit {
        rate: u32::try_from(rate).map_err(corrupt)?,
        burst: u32::try_from(burst).map_err(corrupt)?,
    })
}

/// An account and the limit it has of its own, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountLimits {
    pub name: String,
    /// The account's own rate; `None` takes the default.
    pub rate: Option<u32>,
    /// The account's own burst; `None` takes the default.
    pub burst: Option<u32>,
}

impl AccountLimits {
    /// The limit that applies, with `default` where the account has none.
    pub fn effective(&self, default: IntakeLimit) -> IntakeLimit {
        IntakeLimit {
            rate: self.rate.unwrap_or(default.rate),
            burst: self.burst.unwrap_or(default.burst),
        }
    }

    fn from_row(row: &tokio_postgres::Row) -> Result<Self> {
        let own = |column: &str| -> Result<Option<u32>> {
            row.get::<_, Option<i32>>(column)
                .map(|n| u32::try_from(n).map_err(corrupt))
                .transpose()
        };
        Ok(Self {
            name: row.get("name"),
            rate: own("intake_rate")?,
            burst: own("intake_burst")?,
        })
    }
}

/// Gives the account called `name` its own rate and/or burst (`None` leaves
/// that one as it is); `None` if there is no such account.
#[instrument(skip(client))]
pub async fn set_intake_limit(
    client: &impl GenericClient,
    name: &str,
    rate: Option<u32>,
    burst: Option<u32>,
) -> Result<Option<AccountLimits>> {
    let to_sql = |n: Option<u32>| n.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
    let row = client
        .query_opt(
            "UPDATE accounts
             SET intake_rate = coalesce($2, intake_rate), intake_burst = coalesce($3, intake_burst)
             WHERE name = $1
             RETURNING name, intake_rate, intake_burst",
            &[&name, &to_sql(rate), &to_sql(burst)],
        )
        .await?;
    row.as_ref().map(AccountLimits::from_row).transpose()
}

/// Takes the account called `name` back to the default limit; `None` if
/// there is no such account.
#[instrument(skip(client))]
pub async fn clear_intake_limit(
    client: &impl GenericClient,
    name: &str,
) -> Result<Option<AccountLimits>> {
    let row = client
        .query_opt(
            "UPDATE accounts SET intake_rate = NULL, intake_burst = NULL
             WHERE name = $1
             RETURNING name, intake_rate, intake_burst",
            &[&name],
        )
        .await?;
    row.as_ref().map(AccountLimits::from_row).transpose()
}

/// Every account with its own limits, by name.
pub async fn list_accounts(client: &impl GenericClient) -> Result<Vec<AccountLimits>> {
    let rows = client
        .query(
            "SELECT name, intake_rate, intake_burst FROM accounts ORDER BY name",
            &[],
        )
        .await?;
    rows.iter().map(AccountLimits::from_row).collect()
}
