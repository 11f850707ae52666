//! `kurir accounts list|limit`: accounts and their intake limits.

use clap::{ArgGroup, Subcommand};
use kurir_api::config::IntakeArgs;
use kurir_core::{
    IntakeLimit,
    config::DatabaseArgs,
    intake::{MAX_BURST, MAX_RATE},
};
use kurir_store::limits::{self, AccountLimits};
use serde_json::json;

use crate::Failure;

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// List accounts and the intake limit that applies to each (their own,
    /// or KURIR_INTAKE_RATE / KURIR_INTAKE_BURST).
    List {
        /// One JSON object per account, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Give an account an intake limit of its own, or take it back to the
    /// default with --clear. Running APIs apply it within a second.
    #[command(group(ArgGroup::new("change").required(true).multiple(true).args(["rate", "burst", "clear"])))]
    Limit {
        /// The account's name.
        #[arg(long)]
        account: String,
        /// Messages a second it may have accepted, sustained; 0: no limit.
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_RATE)))]
        rate: Option<u32>,
        /// Messages it may have accepted at once (also its largest batch).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_BURST)))]
        burst: Option<u32>,
        /// Back to the default rate and burst.
        #[arg(long, conflicts_with_all = ["rate", "burst"])]
        clear: bool,
    },
}

pub async fn run(
    command: AccountsCommand,
    database: &DatabaseArgs,
    intake: &IntakeArgs,
) -> Result<(), Failure> {
    let db = kurir_store::Db::connect_lazily(database)?;
    let client = db
        .client()
        .await
        .map_err(|err| Failure::Runtime(format!("cannot reach Postgres: {err}")))?;
    let failed = |err: kurir_store::StoreError| Failure::Runtime(err.to_string());
    let default = intake.limit();
    match command {
        AccountsCommand::List { json } => {
            let accounts = limits::list_accounts(&client).await.map_err(failed)?;
            #[allow(clippy::print_stdout)]
            if json {
                for account in &accounts {
                    let limit = account.effective(default);
                    let line = json!({
                        "account": account.name,
                        "rate": limit.rate,
                        "burst": limit.burst,
                        "own_rate": account.rate.is_some(),
                        "own_burst": account.burst.is_some(),
                    });
                    println!("{line}");
                }
            } else {
                let rows: Vec<[String; 4]> = accounts
                    .iter()
                    .map(|account| {
                        let limit = account.effective(default);
                        let (rate, burst) = if limit.is_unlimited() {
                            ("no limit".to_owned(), "-".to_owned())
                        } else {
                            (limit.rate.to_string(), limit.burst.to_string())
                        };
                        [account.name.clone(), rate, burst, source(account)]
                    })
                    .collect();
                for line in crate::table(["ACCOUNT", "RATE/S", "BURST", "FROM"], &rows) {
                    println!("{line}");
                }
            }
            Ok(())
        }
        AccountsCommand::Limit {
            account,
            rate,
            burst,
            clear,
        } => {
            let name = account.trim();
            let changed = if clear {
                limits::clear_intake_limit(&client, name).await
            } else {
                limits::set_intake_limit(&client, name, rate, burst).await
            }
            .map_err(failed)?;
            let Some(account) = changed else {
                return Err(Failure::Runtime(format!(
                    "no account named {name:?} (kurir accounts list shows them; kurir keys create --account {name} creates it)"
                )));
            };
            #[allow(clippy::print_stdout)]
            {
                println!("{}", describe(&account, default));
            }
            Ok(())
        }
    }
}

/// Where an account's limit comes from: "default", "own rate, own burst"….
fn source(account: &AccountLimits) -> String {
    match (account.rate.is_some(), account.burst.is_some()) {
        (false, false) => "default".into(),
        (rate, burst) => {
            let of = |own: bool| if own { "own" } else { "default" };
            format!("{} rate, {} burst", of(rate), of(burst))
        }
    }
}

/// "acme: 50 messages/s, burst 100 (own rate, own burst)".
fn describe(account: &AccountLimits, default: IntakeLimit) -> String {
    let limit = account.effective(default);
    let mut line = format!("{}: {limit} ({})", account.name, source(account));
    if !limit.is_unlimited() && (limit.burst as usize) < kurir_api::routes::batch::MAX_BATCH {
        line.push_str(&format!(
            "; batches of more than {} messages will be refused (422)",
            limit.burst
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: IntakeLimit = IntakeLimit {
        rate: 1000,
        burst: 10_000,
    };

    fn account(rate: Option<u32>, burst: Option<u32>) -> AccountLimits {
        AccountLimits {
            name: "acme".into(),
            rate,
            burst,
        }
    }

    #[test]
    fn the_description_says_where_each_half_of_the_limit_comes_from() {
        assert_eq!(
            describe(&account(None, None), DEFAULT),
            "acme: 1000 messages/s, burst 10000 (default)"
        );
        assert_eq!(
            describe(&account(Some(50), None), DEFAULT),
            "acme: 50 messages/s, burst 10000 (own rate, default burst)"
        );
        assert_eq!(
            describe(&account(Some(0), None), DEFAULT),
            "acme: no limit (own rate, default burst)"
        );
        assert_eq!(
            describe(&account(Some(5), Some(100)), DEFAULT),
            "acme: 5 messages/s, burst 100 (own rate, own burst); batches of more than 100 messages will be refused (422)"
        );
    }
}
