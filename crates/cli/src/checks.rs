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

/// The two settings whose names have no `KURIR_` prefix (the names other
/// tools read too), and the prefixed names someone might guess for them.
const UNPREFIXED: [(&str, &str); 2] = [
    ("KURIR_DATABASE_URL", "DATABASE_URL"),
    ("KURIR_AMQP_URL", "AMQP_URL"),
];

/// The line for a guessed name (`KURIR_DATABASE_URL`) set where kurir would
/// not read it: unless the real name (`DATABASE_URL`) holds the same value,
/// kurir would silently use another database or broker than the one meant.
pub fn misnamed(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    UNPREFIXED.iter().find_map(|(guessed, real)| {
        let value = var(guessed)?;
        match var(real) {
            Some(real_value) if real_value == value => None,
            Some(_) => Some(format!(
                "error: {guessed} is set and differs from {real}; kurir reads {real} only: unset {guessed}"
            )),
            None => Some(format!(
                "error: {guessed} is set, but kurir reads {real} (no KURIR_ prefix): set {real} instead"
            )),
        }
    })
}

/// Parses the command line; a bad setting exits 2 with one line.
pub fn parse() -> Cli {
    let argv: Vec<String> = std::env::args().collect();
    let cli = try_parse_from(&argv).unwrap_or_else(|err| match setting_error(&err, &argv) {
        Some(line) => {
            eprintln!("{line}");
            std::process::exit(2);
        }
        None => err.exit(),
    });
    if let Some(line) = misnamed(|name| std::env::var(name).ok()) {
        eprintln!("{line}");
        std::process::exit(2);
    }
    cli
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
    fn a_prefixed_database_or_broker_url_is_refused_unless_the_real_one_agrees() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            }
        };
        assert_eq!(misnamed(env(&[("DATABASE_URL", "postgres://a/b")])), None);
        assert_eq!(
            misnamed(env(&[("KURIR_DATABASE_URL", "postgres://a/b")])).unwrap(),
            "error: KURIR_DATABASE_URL is set, but kurir reads DATABASE_URL (no KURIR_ prefix): set DATABASE_URL instead"
        );
        let line = misnamed(env(&[
            ("KURIR_AMQP_URL", "amqp://a/b"),
            ("AMQP_URL", "amqp://c/d"),
        ]))
        .unwrap();
        assert!(line.contains("differs from AMQP_URL"), "{line}");
        assert_eq!(
            misnamed(env(&[
                ("KURIR_AMQP_URL", "amqp://a/b"),
                ("AMQP_URL", "amqp://a/b"),
            ])),
            None
        );
    }

    #[test]
    fn other_mistakes_are_left_to_clap() {
        assert!(line_for(&["kurir", "nope"]).is_none());
    }
}
