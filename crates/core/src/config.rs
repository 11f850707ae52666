//! The settings the API and the worker share: Postgres, RabbitMQ and the
//! queue prefix, the shutdown grace, and the value parsers both use. Every
//! setting is a command-line flag and an environment variable with a
//! documented default, checked when the process starts: a bad value stops it
//! with one line naming the setting.
//!
//! Each crate owns the rest of its settings: `kurir_api::config` the API's
//! (with the receipts webhook's and the intake limit's), `kurir_worker::config`
//! the worker's (with the provider's and the retry schedule's). The binaries
//! flatten these groups into their subcommands; tests build them with
//! [`defaults`] and then override what they need.

use std::time::Duration;

use clap::{Args, FromArgMatches};

/// The defaults of a settings group (flags absent; environment variables still
/// apply, so a test run honours `DATABASE_URL` and `AMQP_URL`).
pub fn defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("kurir").no_binary_name(true));
    let matches = command
        .try_get_matches_from(std::iter::empty::<String>())
        .unwrap_or_else(|err| panic!("invalid kurir settings in the environment: {err}"));
    T::from_arg_matches(&matches)
        .unwrap_or_else(|err| panic!("invalid kurir settings in the environment: {err}"))
}

/// A duration such as `500ms`, `10s`, `5m` or `24h`.
pub fn duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|err| format!("{err} (examples: 500ms, 10s, 5m, 24h)"))
}

/// A [`duration`] longer than zero.
pub fn positive_duration(raw: &str) -> Result<Duration, String> {
    let value = duration(raw)?;
    if value.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(value)
}

/// Postgres connection settings.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres URL. `kurir migrate` creates the database if it is missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/kurir",
        value_parser = database_url,
        global = true
    )]
    pub database_url: String,

    /// Connections in this process's pool. Postgres allows 100 in all by default:
    /// keep (api + workers) × this well under it.
    #[arg(long, env = "KURIR_DB_POOL_SIZE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=200), global = true)]
    pub db_pool_size: u32,

    /// How long to wait to connect, for a pooled connection, or for one statement
    /// before answering 503 / retrying.
    #[arg(long, env = "KURIR_DB_TIMEOUT", default_value = "5s", value_parser = positive_duration, global = true)]
    pub db_timeout: Duration,
}

/// RabbitMQ connection settings.
#[derive(Debug, Clone, Args)]
pub struct BusArgs {
    /// AMQP URL (amqp:// or amqps://). `?heartbeat=N` sets the heartbeat in seconds.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        value_parser = amqp_url,
        global = true
    )]
    pub amqp_url: String,

    /// Prefix of every exchange and queue kurir declares, so several
    /// installations can share one broker.
    #[arg(long, env = "KURIR_QUEUE_PREFIX", default_value = "kurir",
          value_parser = queue_prefix, global = true)]
    pub queue_prefix: String,
}

/// A URL of one of `schemes` with a host, checked at start (the drivers
/// parse it again, but only when they first connect).
fn url_of(raw: &str, schemes: &[&str], example: &str) -> Result<String, String> {
    let url = url::Url::parse(raw)
        .map_err(|err| format!("is not a URL ({err}); for example {example}"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!(
            "must start with {}, not {}:// (for example {example})",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or "),
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("names no host (for example {example})"));
    }
    Ok(raw.to_owned())
}

fn database_url(raw: &str) -> Result<String, String> {
    // libpq's key=value form (`host=… dbname=…`) is valid too.
    if !raw.contains("://") && raw.contains('=') {
        return Ok(raw.to_owned());
    }
    let checked = url_of(
        raw,
        &["postgres", "postgresql"],
        "postgres://postgres@127.0.0.1:5432/kurir",
    )?;
    let path = url::Url::parse(raw).map(|u| u.path().trim_matches('/').to_owned());
    if path.is_ok_and(|p| p.is_empty()) {
        return Err(
            "names no database (for example postgres://postgres@127.0.0.1:5432/kurir)".into(),
        );
    }
    Ok(checked)
}

fn amqp_url(raw: &str) -> Result<String, String> {
    url_of(
        raw,
        &["amqp", "amqps"],
        "amqp://guest:guest@127.0.0.1:5672/%2f",
    )
}

fn queue_prefix(raw: &str) -> Result<String, String> {
    let ok = !raw.is_empty()
        && raw.len() <= 100
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err("must be 1 to 100 letters, digits, '_', '-' or '.'".into())
    }
}

/// How the API and the worker stop.
#[derive(Debug, Clone, Args)]
pub struct ShutdownArgs {
    /// How long to wait for in-flight work to finish on SIGTERM/SIGINT.
    #[arg(long, env = "KURIR_SHUTDOWN_GRACE", default_value = "20s", value_parser = duration)]
    pub shutdown_grace: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_documented() {
        let shutdown: ShutdownArgs = defaults();
        assert_eq!(shutdown.shutdown_grace, Duration::from_secs(20));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(
            positive_duration("0s")
                .unwrap_err()
                .contains("more than zero")
        );
        assert!(duration("soon").unwrap_err().contains("examples: 500ms"));
    }

    #[test]
    fn urls_are_checked_at_start() {
        assert!(amqp_url("nonsense").unwrap_err().contains("is not a URL"));
        assert!(amqp_url("http://x/").unwrap_err().contains("amqp://"));
        assert!(amqp_url("amqp://guest:guest@127.0.0.1:5672/%2f").is_ok());
        assert!(
            database_url("mysql://x@y/z")
                .unwrap_err()
                .contains("postgres://")
        );
        assert!(
            database_url("postgres://x@y")
                .unwrap_err()
                .contains("no database")
        );
        assert!(database_url("postgres://postgres@127.0.0.1:5432/kurir").is_ok());
        assert!(database_url("host=127.0.0.1 dbname=kurir").is_ok());
    }
}
