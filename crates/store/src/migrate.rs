//! `kurir migrate`: create the database if it is missing, then apply the
//! embedded refinery migrations under an advisory lock, so any number of
//! concurrent runs are safe.

use tokio_postgres::{NoTls, error::SqlState};
use tracing::info;

use crate::{Result, StoreError};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Any fixed number works as long as every kurir uses the same one.
const MIGRATION_LOCK: i64 = 0x6b75_7269_725f_6d67; // "kurir_mg"

/// Connects with `config`, spawning the connection driver.
pub async fn connect(config: &tokio_postgres::Config) -> Result<tokio_postgres::Client> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "postgres connection closed");
        }
    });
    Ok(client)
}

/// Creates the database `config` names if it does not exist yet.
pub async fn create_database_if_missing(config: &tokio_postgres::Config) -> Result<bool> {
    let name = config
        .get_dbname()
        .ok_or_else(|| StoreError::Unavailable("DATABASE_URL names no database".into()))?
        .to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let client = connect(&admin).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    let sql = format!("CREATE DATABASE {}", quote_ident(&name));
    match client.batch_execute(&sql).await {
        Ok(()) => {
            info!(database = %name, "created database");
            Ok(true)
        }
        // Another `kurir migrate` won the race: fine.
        Err(err)
            if err.code() == Some(&SqlState::DUPLICATE_DATABASE)
                || err.code() == Some(&SqlState::UNIQUE_VIOLATION) =>
        {
            Ok(false)
        }
        Err(err) => Err(err.into()),
    }
}

/// Migrations whose opening comment was edited after they shipped (it
/// cited documents the repository does not hold): `(version, checksum as
/// shipped)`. Refinery checksums a migration's whole text, so a database
/// migrated before the edit holds the old checksum; [`accept_comment_edits`]
/// moves exactly these to the new one. Any other difference is still
/// refused as divergent.
const COMMENT_EDITS: [(i32, &str); 3] = [
    (2, "6568775819899244796"),
    (3, "12889536303728189387"),
    (4, "14299805453533787043"),
];

/// Records the current checksum of each migration in [`COMMENT_EDITS`]
/// that a database holds with its shipped checksum (nothing else changed
/// in those files but their comments).
async fn accept_comment_edits(client: &tokio_postgres::Client) -> Result<()> {
    let history = client
        .query_opt(
            "SELECT 1 FROM information_schema.tables WHERE table_name = 'refinery_schema_history'",
            &[],
        )
        .await?;
    if history.is_none() {
        return Ok(());
    }
    let migrations = embedded::migrations::runner().get_migrations().clone();
    for (version, shipped) in COMMENT_EDITS {
        let Some(current) = migrations.iter().find(|m| m.version() == version) else {
            continue;
        };
        let current = current.checksum().to_string();
        if current == shipped {
            continue;
        }
        client
            .execute(
                "UPDATE refinery_schema_history SET checksum = $1 WHERE version = $2 AND checksum = $3",
                &[&current, &version, &shipped],
            )
            .await?;
    }
    Ok(())
}

/// Applies every pending migration; returns how many were applied.
pub async fn run(config: &tokio_postgres::Config) -> Result<usize> {
    create_database_if_missing(config).await?;
    // Migrations may take longer than the statement timeout meant for
    // requests; and "relation … already exists, skipping" is no news.
    let mut config = config.clone();
    config.options("-c statement_timeout=0 -c client_min_messages=warning");
    let mut client = connect(&config).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let report = async {
        accept_comment_edits(&client).await?;
        embedded::migrations::runner()
            .set_abort_divergent(true)
            .run_async(&mut client)
            .await
            .map_err(|err| StoreError::Migration(err.to_string()))
    }
    .await;
    // Unlock whatever happened; closing the connection would too.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let report = report?;
    let applied = report.applied_migrations().len();
    for migration in report.applied_migrations() {
        info!(migration = %migration, "applied migration");
    }
    Ok(applied)
}

/// What `kurir api` and `kurir worker` find in the database at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schema {
    /// Migrated to exactly what this kurir needs.
    Current,
    /// Migrated past what this kurir knows (a newer kurir ran `migrate`):
    /// fine during a rolling upgrade.
    Newer { at: i32, known: i32 },
    /// The database does not exist.
    NoDatabase { name: String },
    /// The database exists but `kurir migrate` never ran on it.
    NotMigrated { name: String },
    /// Migrated, but not as far as this kurir needs.
    Behind { name: String, at: i32, needs: i32 },
    /// Postgres refused the login (wrong user or password, no pg_hba entry).
    LoginRefused { reason: String },
}

impl std::fmt::Display for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schema::Current => write!(f, "up to date"),
            Schema::Newer { at, known } => write!(
                f,
                "migrated to version {at}, newer than this kurir knows ({known})"
            ),
            Schema::NoDatabase { name } => write!(
                f,
                "database \"{name}\" does not exist (DATABASE_URL): run `kurir migrate` to create it"
            ),
            Schema::NotMigrated { name } => write!(
                f,
                "database \"{name}\" has no kurir tables (DATABASE_URL): run `kurir migrate`"
            ),
            Schema::Behind { name, at, needs } => write!(
                f,
                "database \"{name}\" is at migration {at}, this kurir needs {needs}: run `kurir migrate`"
            ),
            Schema::LoginRefused { reason } => write!(
                f,
                "Postgres refused the login: {reason} (check the user and password in DATABASE_URL)"
            ),
        }
    }
}

/// The last embedded migration's version.
pub fn latest_version() -> i32 {
    embedded::migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| m.version())
        .max()
        .unwrap_or(0)
}

/// Looks at the database `config` names: does it exist, and is it migrated?
/// An unreachable server is an error (the caller may start anyway and wait).
pub async fn check(config: &tokio_postgres::Config) -> Result<Schema> {
    let name = config.get_dbname().unwrap_or("").to_owned();
    let (client, connection) = match config.connect(NoTls).await {
        Ok(connected) => connected,
        Err(err) => {
            let refused = err
                .as_db_error()
                .map(|db| (db.code().clone(), db.message().to_owned()));
            return match refused {
                Some((code, _)) if code == SqlState::INVALID_CATALOG_NAME => {
                    Ok(Schema::NoDatabase { name })
                }
                // 28: invalid authorization (no such role, wrong password, pg_hba)
                Some((code, reason)) if code.code().starts_with("28") => {
                    Ok(Schema::LoginRefused { reason })
                }
                _ => Err(err.into()),
            };
        }
    };
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let history = client
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await?;
    if !history.get::<_, bool>(0) {
        return Ok(Schema::NotMigrated { name });
    }
    let row = client
        .query_one("SELECT max(version) FROM refinery_schema_history", &[])
        .await?;
    let at: Option<i32> = row.get(0);
    let known = latest_version();
    Ok(match at {
        None => Schema::NotMigrated { name },
        Some(at) if at < known => Schema::Behind {
            name,
            at,
            needs: known,
        },
        Some(at) if at > known => Schema::Newer { at, known },
        Some(_) => Schema::Current,
    })
}

/// Identifies the embedded migrations (changes when any of them does), so a
/// database migrated once can be cloned as a template (the tests do).
pub fn fingerprint() -> String {
    let runner = embedded::migrations::runner();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for migration in runner.get_migrations() {
        for byte in migration.checksum().to_le_bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

/// Quotes an SQL identifier ("my db" → "\"my db\"").
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::quote_ident;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("kurir"), "\"kurir\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
