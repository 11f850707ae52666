//! kurir's Postgres layer: the pool, the migrations and every SQL statement.
//!
//! No other crate writes SQL. Functions here are small, take a
//! [`GenericClient`] so callers can pass a pooled client or a transaction, and
//! return rows already parsed into `kurir_core` types. They know nothing of
//! HTTP or AMQP.

use std::{future::Future, time::Duration};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use kurir_core::config::DatabaseArgs;
use tokio_postgres::{NoTls, error::SqlState};

mod columns;
pub mod idempotency;
pub mod import;
pub mod keys;
pub mod limits;
pub mod listen;
pub mod messages;
pub mod migrate;
pub mod pipeline;
pub mod receipts;
pub mod stats;
pub mod status_updates;
pub mod users;

pub use deadpool_postgres::{GenericClient, Object as Client, Pool as PgPool, Transaction};

/// What went wrong talking to Postgres, sorted by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres is down, unreachable, out of connections or too slow: answer
    /// 503 / try again later.
    #[error("postgres unavailable: {0}")]
    Unavailable(String),
    /// A unique constraint refused the row; carries the constraint's name.
    #[error("conflict on {constraint}")]
    Conflict { constraint: String },
    /// Anything else: a bug or a schema mismatch.
    #[error("postgres error: {}", cause_of(.0))]
    Database(#[source] tokio_postgres::Error),
    /// A row held a value this version cannot read.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The migrations could not be applied.
    #[error("migration failed: {0}")]
    Migration(String),
    /// One statement's failure, handed to each of the callers it served
    /// (see [`StoreError::shared`]); its text and cause chain are the original's.
    #[error(transparent)]
    Shared(std::sync::Arc<StoreError>),
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// Hands one failure to each caller of a statement that served several:
    /// each call of the returned function makes one caller's copy. An outage
    /// stays an outage (callers answer 503 on it); anything else is the
    /// original error behind an `Arc`, with its whole cause chain.
    pub fn shared(self) -> impl Fn() -> StoreError {
        let shared = std::sync::Arc::new(self);
        move || match shared.as_ref() {
            StoreError::Unavailable(cause) => StoreError::Unavailable(cause.clone()),
            _ => StoreError::Shared(std::sync::Arc::clone(&shared)),
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        if let Some(db) = err.as_db_error() {
            let code = db.code();
            if *code == SqlState::UNIQUE_VIOLATION {
                return StoreError::Conflict {
                    constraint: db.constraint().unwrap_or_default().to_owned(),
                };
            }
            // The database or its schema is gone (dropped, or never
            // migrated): nothing a request did wrong, and nothing to retry
            // at once either, but an outage all the same.
            if *code == SqlState::INVALID_CATALOG_NAME {
                return StoreError::Unavailable(format!("{} (run `kurir migrate`)", db.message()));
            }
            if *code == SqlState::UNDEFINED_TABLE {
                return StoreError::Unavailable(format!(
                    "{}: the database has no kurir schema (run `kurir migrate`)",
                    db.message()
                ));
            }
            let code = code.code();
            // 08: connection exception, 28: authentication, 53: insufficient
            // resources, 57: operator intervention (shutdown, statement
            // timeout), 25006: read-only transaction (a standby, mid-failover)
            if ["08", "28", "53", "57"].iter().any(|c| code.starts_with(c)) || code == "25006" {
                return StoreError::Unavailable(db.message().to_owned());
            }
            return StoreError::Database(err);
        }
        // No server answer: the connection is closed or broken. Keep the
        // cause ("Connection refused"), which tokio-postgres puts in `source`.
        match std::error::Error::source(&err) {
            Some(cause) => StoreError::Unavailable(format!("{err}: {cause}")),
            None => StoreError::Unavailable(err.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        match err {
            deadpool_postgres::PoolError::Backend(err) => err.into(),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Why a pool (or a connection's settings) could not even be built: a
/// setting's mistake, except [`SetupError::Pool`].
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("DATABASE_URL is not a valid Postgres URL: {0}")]
    BadUrl(#[source] tokio_postgres::Error),
    #[error("DATABASE_URL must name a database")]
    NoDatabase,
    #[error("cannot build the Postgres pool: {0}")]
    Pool(#[source] deadpool_postgres::BuildError),
}

impl SetupError {
    /// A mistake in the settings (the operator's to fix), not a failure.
    pub fn is_setting(&self) -> bool {
        !matches!(self, SetupError::Pool(_))
    }
}

/// Runs one database interaction with a deadline, so a dead or stalled
/// Postgres turns into [`StoreError::Unavailable`] instead of a hang.
pub async fn timed<T>(limit: Duration, work: impl Future<Output = Result<T>>) -> Result<T> {
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(format!(
            "no answer within {}ms",
            limit.as_millis()
        ))),
    }
}

/// The connection settings every kurir connection uses.
pub fn pg_config(args: &DatabaseArgs) -> Result<tokio_postgres::Config, SetupError> {
    let mut config: tokio_postgres::Config =
        args.database_url.parse().map_err(SetupError::BadUrl)?;
    if config.get_dbname().is_none() {
        return Err(SetupError::NoDatabase);
    }
    if config.get_application_name().is_none() {
        config.application_name("kurir");
    }
    config
        .connect_timeout(args.db_timeout)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10))
        .tcp_user_timeout(args.db_timeout.max(Duration::from_secs(5)));
    // The server gives up on a statement before the client does.
    let statement_timeout = args.db_timeout.as_millis();
    // Plans are made once per statement and connection (generic plans), and
    // they use an index wherever one serves (no sequential scans but where
    // nothing else can answer). Every statement kurir runs is written for an
    // index; the claims, records and accepts take id arrays. Planning each
    // execution afresh cost as much as running it (measured: about half of
    // Postgres' time at 1,000 msg/s), and a generic plan made while a table
    // was young (a fresh deployment, when scanning looks cheapest) would
    // scan the whole table for every later batch for as long as the
    // connection lives.
    config.options(format!(
        "-c statement_timeout={statement_timeout} -c enable_seqscan=off -c plan_cache_mode=force_generic_plan"
    ));
    Ok(config)
}

/// Builds the pool. Connections are made lazily, so this succeeds while
/// Postgres is down; `/readyz` and the first query tell.
pub fn pool(args: &DatabaseArgs) -> Result<Pool, SetupError> {
    let config = pg_config(args)?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(args.db_pool_size as usize)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(args.db_timeout),
            create: Some(args.db_timeout),
            recycle: Some(args.db_timeout),
        })
        .build()
        .map_err(SetupError::Pool)
}

/// The pool and the deadline of every interaction with it, in one handle:
/// what the API, the worker and the `kurir` commands pass around.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    timeout: Duration,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Db {
    pub fn new(pool: Pool, timeout: Duration) -> Self {
        Self { pool, timeout }
    }

    /// Builds the pool (see [`pool`]) with `DATABASE_URL` and `KURIR_DB_TIMEOUT`.
    pub fn connect_lazily(args: &DatabaseArgs) -> Result<Self, SetupError> {
        Ok(Self::new(pool(args)?, args.db_timeout))
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `work` on a pooled connection, the wait for the connection
    /// included in the deadline: a dead or stalled Postgres is
    /// [`StoreError::Unavailable`], never a hang.
    pub async fn run<T>(&self, work: impl AsyncFnOnce(&Client) -> Result<T>) -> Result<T> {
        timed(self.timeout, async {
            let client = self.get().await?;
            work(&client).await
        })
        .await
    }

    /// A connection from the pool, the wait timed
    /// (`kurir_db_pool_wait_seconds`).
    async fn get(&self) -> Result<Client> {
        let started = std::time::Instant::now();
        let client = self.pool.get().await;
        metrics::histogram!("kurir_db_pool_wait_seconds").record(started.elapsed().as_secs_f64());
        Ok(client?)
    }

    /// Sets the pool gauges (`kurir_db_pool_connections`,
    /// `kurir_db_pool_waiting`) of the pool named `pool` (`api`, `worker`:
    /// `kurir dev` runs both in one process).
    pub fn report_pool(&self, pool: &'static str) {
        let status = self.pool.status();
        let in_use = status.size.saturating_sub(status.available);
        metrics::gauge!("kurir_db_pool_connections", "pool" => pool, "state" => "in_use")
            .set(in_use as f64);
        metrics::gauge!("kurir_db_pool_connections", "pool" => pool, "state" => "idle")
            .set(status.available as f64);
        metrics::gauge!("kurir_db_pool_waiting", "pool" => pool).set(status.waiting as f64);
    }

    /// Runs `work` in one transaction on a pooled connection, committed if
    /// `work` succeeds and rolled back otherwise (also when the deadline,
    /// which covers everything, the commit included, cuts it short).
    pub async fn transaction<T>(
        &self,
        work: impl for<'a, 't> AsyncFnOnce(&'a Transaction<'t>) -> Result<T>,
    ) -> Result<T> {
        timed(self.timeout, async {
            let mut client = self.get().await?;
            let transaction = client.transaction().await?;
            let done = work(&transaction).await?;
            transaction.commit().await?;
            Ok(done)
        })
        .await
    }

    /// A pooled connection, for a caller that bounds each of its statements
    /// itself ([`Db::timed`]) rather than all of them at once.
    pub async fn client(&self) -> Result<Client> {
        timed(self.timeout, self.get()).await
    }

    /// `work`, bounded by the deadline.
    pub async fn timed<T>(&self, work: impl Future<Output = Result<T>>) -> Result<T> {
        timed(self.timeout, work).await
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<()> {
        ping(&self.pool, self.timeout).await
    }
}

/// A cheap round trip, for readiness checks.
pub async fn ping(pool: &Pool, limit: Duration) -> Result<()> {
    timed(limit, async {
        let client = pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    })
    .await
}

/// What Postgres said (its message, detail and hint), or the error's cause chain.
fn cause_of(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut text = db.message().to_owned();
        if let Some(detail) = db.detail() {
            text.push_str(": ");
            text.push_str(detail);
        }
        if let Some(hint) = db.hint() {
            text.push_str(" (");
            text.push_str(hint);
            text.push(')');
        }
        return text;
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

#[cfg(test)]
mod tests {
    use super::StoreError;

    #[tokio::test]
    async fn a_shared_failure_keeps_its_cause_chain_and_an_outage_stays_an_outage() {
        // A real driver error with a cause: nothing listens on port 1.
        let err = tokio_postgres::connect("host=127.0.0.1 port=1 user=x", tokio_postgres::NoTls)
            .await
            .err()
            .expect("nothing listens on port 1");
        let original = StoreError::Database(err);
        let text = original.to_string();
        let share = original.shared();
        for copy in [share(), share()] {
            assert_eq!(copy.to_string(), text);
            let mut chain = 0;
            let mut source = std::error::Error::source(&copy);
            while let Some(cause) = source {
                chain += 1;
                source = cause.source();
            }
            assert!(chain >= 2, "the driver error and its io cause: {chain}");
        }

        let outage = StoreError::Unavailable("down".into()).shared();
        assert!(outage().is_unavailable());
        assert!(outage().is_unavailable());
    }
}
