//! `kurir keys create|revoke|list`.

use clap::Subcommand;
use kurir_core::{apikey::ApiKey, config::DatabaseArgs};
use kurir_store::keys::{self, KeyInserted};
use serde_json::json;
use tracing::info;

use crate::Failure;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create the account if needed and a key for it; prints the key alone on stdout.
    Create {
        /// The account's name.
        #[arg(long)]
        account: String,
        /// Use this key instead of a random one (kurir_<id>_<secret>), e.g. a
        /// fixed demo key. Creating the same key again is a no-op.
        #[arg(long, env = "KURIR_NEW_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// Revoke a key: its id as `keys list` shows it, or the whole key.
    Revoke {
        /// `KEY_ID` from `kurir keys list`, or the key itself (kurir_<id>_<secret>).
        key: String,
    },
    /// List keys: id, account, created, revoked.
    List {
        /// One JSON object per key, one per line.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(command: KeysCommand, database: &DatabaseArgs) -> Result<(), Failure> {
    let db = kurir_store::Db::connect_lazily(database)?;
    let client = db
        .client()
        .await
        .map_err(|err| Failure::Runtime(format!("cannot reach Postgres: {err}")))?;
    let failed = |err: kurir_store::StoreError| Failure::Runtime(err.to_string());
    match command {
        KeysCommand::Create { account, key } => {
            let account_name = account.trim();
            if account_name.is_empty() || account_name.len() > 200 {
                return Err(Failure::Config(
                    "--account must be 1 to 200 characters".into(),
                ));
            }
            let key = match key {
                Some(raw) => ApiKey::parse(&raw)
                    .map_err(|err| Failure::Config(format!("--key {}", err.message)))?,
                None => ApiKey::generate(),
            };
            let account = keys::ensure_account(&client, account_name)
                .await
                .map_err(failed)?;
            let id = key.key_id();
            match keys::insert_key(&client, account, id, &key.hash())
                .await
                .map_err(failed)?
            {
                KeyInserted::Created => {
                    info!(key_id = id, account = account_name, "api key created")
                }
                KeyInserted::AlreadyThere => {
                    info!(
                        key_id = id,
                        account = account_name,
                        "this key exists already; nothing to do"
                    )
                }
                KeyInserted::Revoked => {
                    return Err(Failure::Runtime(format!(
                        "key {id} exists but was revoked; a revoked key stays revoked (create a new one)"
                    )));
                }
                KeyInserted::OtherAccount => {
                    return Err(Failure::Runtime(format!(
                        "key {id} exists already for another account"
                    )));
                }
                KeyInserted::IdTaken => {
                    return Err(Failure::Runtime(format!(
                        "another key has the id {id}; choose another id"
                    )));
                }
            }
            #[allow(clippy::print_stdout)]
            {
                println!("{}", key.expose());
            }
            Ok(())
        }
        KeysCommand::Revoke { key } => {
            // The whole key works too: its id is the part between the underscores.
            let key_id = match ApiKey::parse(&key) {
                Ok(whole) => whole.key_id().to_owned(),
                Err(_) => key.trim().trim_start_matches("kurir_").to_owned(),
            };
            if keys::revoke_key(&client, &key_id).await.map_err(failed)? {
                info!(%key_id, "key revoked");
                Ok(())
            } else {
                Err(Failure::Runtime(format!(
                    "no live key with id {key_id} (see kurir keys list)"
                )))
            }
        }
        KeysCommand::List { json } => {
            let keys = keys::list_keys(&client).await.map_err(failed)?;
            let rows: Vec<[String; 4]> = keys
                .iter()
                .map(|key| {
                    [
                        key.key_id.clone(),
                        key.account.clone(),
                        key.created_at.to_rfc3339(),
                        key.revoked_at
                            .map(|at| at.to_rfc3339())
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            #[allow(clippy::print_stdout)]
            if json {
                for key in &keys {
                    let line = json!({
                        "key_id": key.key_id,
                        "account": key.account,
                        "created_at": key.created_at,
                        "revoked_at": key.revoked_at,
                    });
                    println!("{line}");
                }
            } else {
                for line in crate::table(["KEY_ID", "ACCOUNT", "CREATED", "REVOKED"], &rows) {
                    println!("{line}");
                }
            }
            Ok(())
        }
    }
}
