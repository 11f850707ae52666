//! What `kurir` says when a setting is wrong: one line naming the setting
//! (the environment variable if that is where the value came from), with the
//! valid values where there is a fixed list, and exit code 2.

use clap::error::{ContextKind, ContextValue, ErrorKind};
use kurir_core::config::DatabaseArgs;
use kurir_store::migrate::Schema;
use tracing::warn;

use crate::{Cli, Failure};

/// The environment variable of the flag `--long`, if it has one.
fn env_of(long: &str) -> Option<String> {
    fn find(command: &clap::Command, long: &str) -> Option<String> {
        command
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .and_then(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .or_else(|| command.get_subcommands().find_map(|c| find(c, long)))
    }
    find(&crate::command(), long)
}

/// The one line for a bad setting; `None` for other command-line mistakes
/// (unknown flags, `--help`), which clap words well itself.
pub fn setting_error(err: &clap::Error, argv: &[String]) -> Option<String> {
    if !matches!(
        err.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        return None;
    }
    let arg = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.clone(),
        _ => return None,
    };
    let long = arg
        .trim_start_matches("--")
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned();
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => value.clone(),
        _ => String::new(),
    };
    // The flag, if this value was given as one; else the environment
    // variable, if it is set (a flag before the command's name does not
    // keep the command from reading the variable too).
    let flag = format!("--{long}");
    let given_as_flag = argv.windows(2).any(|w| w[0] == flag && w[1] == value)
        || argv.contains(&format!("{flag}={value}"));
    let setting = match env_of(&long) {
        Some(env) if !given_as_flag && std::env::var_os(&env).is_some() => env,
        _ => flag,
    };
    let why = match err.get(ContextKind::ValidValue) {
        Some(ContextValue::Strings(valid)) => format!("; use one of: {}", valid.join(", ")),
        _ => match std::error::Error::source(err) {
            Some(reason) => format!(": {reason}"),
            None => String::new(),
        },
    };
    Some(format!("error: {setting}={value:?} is not valid{why}"))
}

/// Parses `argv` as [`crate::command`] does.
pub fn try_parse_from(argv: &[String]) -> Result<Cli, clap::Error> {
    use clap::FromArgMatches;
    let matches = crate::command().try_get_matches_from(argv)?;
    Cli::from_arg_matches(&matches)
}

/// Parses the command line; a bad setting exits 2 with one line.
pub fn parse() -> Cli {
    let argv: Vec<String> = std::env::args().collect();
    try_parse_from(&argv).unwrap_or_else(|err| match setting_error(&err, &argv) {
        Some(line) => {
            eprintln!("{line}");
            std::process::exit(2);
        }
        None => err.exit(),
    })
}

/// Before `api`, `worker` or `dev` start: the database must exist and be
/// migrated as far as this kurir needs. A Postgres that cannot be reached is
/// no reason not to start (the API answers 503 until it is back, workers
/// wait), so that only warns.
pub async fn database(database: &DatabaseArgs) -> Result<(), Failure> {
    let config = kurir_store::pg_config(database)?;
    let checked =
        tokio::time::timeout(database.db_timeout, kurir_store::migrate::check(&config)).await;
    match checked {
        Ok(Ok(Schema::Current)) => Ok(()),
        Ok(Ok(newer @ Schema::Newer { .. })) => {
            warn!("the database is {newer}; carrying on (a newer kurir migrated it)");
            Ok(())
        }
        Ok(Ok(problem)) => Err(Failure::Config(problem.to_string())),
        Ok(Err(err)) => {
            warn!("cannot reach Postgres at start ({err}); starting anyway, it is retried");
            Ok(())
        }
        Err(_) => {
            warn!(
                "Postgres did not answer within KURIR_DB_TIMEOUT ({}) at start; starting anyway, it is retried",
                humantime::format_duration(database.db_timeout)
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_for(args: &[&str]) -> Option<String> {
        let argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let err = try_parse_from(&argv).unwrap_err();
        setting_error(&err, &argv)
    }

    #[test]
    fn a_fixed_list_names_its_valid_values() {
        let line = line_for(&["kurir", "worker", "--provider", "sms"]).unwrap();
        assert_eq!(
            line,
            r#"error: --provider="sms" is not valid; use one of: log, whatsapp, webhook"#
        );
    }

    #[test]
    fn a_bad_value_says_why_in_one_line() {
        let line = line_for(&["kurir", "worker", "--retry-jitter", "2"]).unwrap();
        assert_eq!(
            line,
            r#"error: --retry-jitter="2" is not valid: must be between 0 and 1"#
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn other_mistakes_are_left_to_clap() {
        assert!(line_for(&["kurir", "nope"]).is_none());
    }
}
