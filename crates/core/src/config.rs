//! Typed configuration. Every setting is a command-line flag and an environment
//! variable with a documented default, checked when the process starts: a bad
//! value stops it with one line naming the setting.
//!
//! The binaries flatten these groups into their subcommands; tests build them
//! with [`defaults`] and then override what they need.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, FromArgMatches, ValueEnum};

use crate::intake::IntakeLimit;

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

fn duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|err| format!("{err} (examples: 500ms, 10s, 5m, 24h)"))
}

fn positive_duration(raw: &str) -> Result<Duration, String> {
    let value = duration(raw)?;
    if value.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(value)
}

fn unit_interval(raw: &str) -> Result<f64, String> {
    let value: f64 = raw.parse().map_err(|_| "must be a number".to_owned())?;
    if !(0.0..=1.0).contains(&value) {
        return Err("must be between 0 and 1".into());
    }
    Ok(value)
}

fn factor(raw: &str) -> Result<f64, String> {
    let value: f64 = raw.parse().map_err(|_| "must be a number".to_owned())?;
    if !(1.0..=10.0).contains(&value) {
        return Err("must be between 1 and 10".into());
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

/// Settings both the API and the worker use for the delivery pipeline.
#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// How long a relay owns the rows it is publishing before another relay
    /// may take them (the API needs no lease: the rows it publishes itself
    /// are stored as published, and the guard covers its crash).
    #[arg(long, env = "KURIR_PUBLISH_LEASE", default_value = "10s", value_parser = positive_duration)]
    pub publish_lease: Duration,

    /// How long to wait for in-flight work to finish on SIGTERM/SIGINT.
    #[arg(long, env = "KURIR_SHUTDOWN_GRACE", default_value = "20s", value_parser = duration)]
    pub shutdown_grace: Duration,
}

/// `kurir api` settings.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "KURIR_API_ADDR", default_value = "127.0.0.1:8080")]
    pub api_addr: SocketAddr,

    /// Largest request body accepted, in bytes (larger is 413).
    #[arg(long, env = "KURIR_MAX_BODY_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=64 * 1024 * 1024))]
    pub max_body_bytes: u64,

    /// How long a client may take to send a request's headers, counted from
    /// the connection's start or the request's first byte. Past it the server
    /// answers 408 (if any of the request came) and closes the connection.
    #[arg(long, env = "KURIR_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub header_timeout: Duration,

    /// How long a client may take to send a whole request body once its
    /// handler starts reading it. Past it the answer is 408.
    #[arg(long, env = "KURIR_BODY_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub body_timeout: Duration,

    /// How long a kept-alive connection may sit between requests before the
    /// server closes it.
    #[arg(long, env = "KURIR_IDLE_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    pub idle_timeout: Duration,

    /// How long an API key found valid is trusted without asking Postgres
    /// again: a revoked key stops working within this. `0s` asks every time.
    #[arg(long, env = "KURIR_KEY_CACHE_TTL", default_value = "5s", value_parser = duration)]
    pub key_cache_ttl: Duration,

    #[command(flatten)]
    pub intake: IntakeArgs,

    #[command(flatten)]
    pub receipts: ReceiptArgs,
}

/// The receipts webhook, `/v1/webhooks/whatsapp` (docs/api.md, "Receipts").
#[derive(Debug, Clone, Args)]
pub struct ReceiptArgs {
    /// The Meta app's secret: every receipt POST must carry its
    /// `X-Hub-Signature-256` (HMAC-SHA256 of the body). Unset: every POST is 401.
    #[arg(long, env = "KURIR_WHATSAPP_APP_SECRET", hide_env_values = true)]
    pub whatsapp_app_secret: Option<String>,

    /// The token Meta's webhook set-up sends as `hub.verify_token`; the
    /// handshake answers `hub.challenge` only for it. Unset: every handshake is 403.
    #[arg(long, env = "KURIR_WHATSAPP_VERIFY_TOKEN", hide_env_values = true)]
    pub whatsapp_verify_token: Option<String>,
}

/// The default per-account intake limit (an account's own, set with
/// `kurir accounts limit`, takes its place). `kurir api` enforces it;
/// `kurir accounts list` shows it.
#[derive(Debug, Clone, Args)]
pub struct IntakeArgs {
    /// Messages a second an account may have accepted, sustained: the token
    /// bucket's rate. `0`: no limit, except for accounts given one of their own.
    #[arg(long, env = "KURIR_INTAKE_RATE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::intake::MAX_RATE)), global = true)]
    pub intake_rate: u32,

    /// Messages an account may have accepted at once: the bucket's size. A
    /// batch counts its items, so this is also the largest batch it can send.
    #[arg(long, env = "KURIR_INTAKE_BURST", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::intake::MAX_BURST)), global = true)]
    pub intake_burst: u32,
}

impl IntakeArgs {
    pub fn limit(&self) -> IntakeLimit {
        IntakeLimit {
            rate: self.intake_rate,
            burst: self.intake_burst,
        }
    }
}

/// Which provider the worker delivers through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    /// Accepts and logs; no network. The default, so a first run works.
    Log,
    /// The WhatsApp Cloud API (or kurir-sandbox, which speaks it).
    Whatsapp,
    /// A signed JSON POST to one URL.
    Webhook,
}

/// Provider settings.
#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// log, whatsapp or webhook.
    #[arg(long, env = "KURIR_PROVIDER", value_enum, default_value_t = ProviderKind::Log)]
    pub provider: ProviderKind,

    /// How long one provider call may take before it counts as a retryable timeout.
    #[arg(long, env = "KURIR_PROVIDER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub provider_timeout: Duration,

    /// WhatsApp Cloud API base URL, version segment included.
    #[arg(
        long,
        env = "KURIR_WHATSAPP_BASE_URL",
        default_value = "https://graph.facebook.com/v25.0"
    )]
    pub whatsapp_base_url: String,

    /// WhatsApp Cloud API bearer token.
    #[arg(long, env = "KURIR_WHATSAPP_TOKEN", hide_env_values = true)]
    pub whatsapp_token: Option<String>,

    /// The sending phone number's id.
    #[arg(long, env = "KURIR_WHATSAPP_PHONE_NUMBER_ID")]
    pub whatsapp_phone_number_id: Option<String>,

    /// Generic webhook provider: the URL each event is POSTed to.
    #[arg(long, env = "KURIR_WEBHOOK_URL")]
    pub webhook_url: Option<String>,

    /// Generic webhook provider: the HMAC-SHA256 signing secret
    /// (`whsec_` + base64, or any other string used as raw bytes).
    #[arg(long, env = "KURIR_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
}

impl ProviderArgs {
    /// The worker's guard over one provider call: the provider's own timeout
    /// plus one second, so the provider's timeout fires first and the guard
    /// only catches a hang.
    pub fn call_limit(&self) -> Duration {
        self.provider_timeout + Duration::from_secs(1)
    }
}

/// The retry schedule: exponential backoff with jitter, capped, with a deadline.
#[derive(Debug, Clone, Args)]
pub struct RetryArgs {
    /// Delay before the first retry.
    #[arg(long, env = "KURIR_RETRY_INITIAL", default_value = "1s", value_parser = positive_duration)]
    pub retry_initial: Duration,

    /// Each retry waits this many times longer than the one before.
    #[arg(long, env = "KURIR_RETRY_FACTOR", default_value_t = 2.0, value_parser = factor)]
    pub retry_factor: f64,

    /// Random spread of each delay: 0.25 means ±25 %.
    #[arg(long, env = "KURIR_RETRY_JITTER", default_value_t = 0.25, value_parser = unit_interval)]
    pub retry_jitter: f64,

    /// Cap on the delay between two attempts, before jitter (which may add
    /// up to `KURIR_RETRY_JITTER` of it).
    #[arg(long, env = "KURIR_RETRY_MAX_INTERVAL", default_value = "10m", value_parser = positive_duration)]
    pub retry_max_interval: Duration,

    /// Give up (status `failed`) once a message is this old.
    #[arg(long, env = "KURIR_RETRY_MAX_AGE", default_value = "24h", value_parser = positive_duration)]
    pub retry_max_age: Duration,
}

/// `kurir worker` settings.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Deliveries in flight at once in this worker (also the broker prefetch).
    /// They hold no database connection (claims and records are grouped), so
    /// many are cheap, and more in flight means larger groups: 256 measured
    /// 385 µs of CPU per message against 532 at 64.
    #[arg(long, env = "KURIR_WORKER_CONCURRENCY", default_value_t = 256,
          value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub worker_concurrency: u16,

    /// Address of the worker's health endpoints (`/healthz`, `/readyz`).
    #[arg(
        long,
        env = "KURIR_WORKER_METRICS_ADDR",
        default_value = "127.0.0.1:9091"
    )]
    pub worker_metrics_addr: SocketAddr,

    /// How long a worker owns a row it is delivering; a worker that dies
    /// mid-delivery gives it up after this. Must exceed the provider timeout
    /// + 1s + the database timeout.
    #[arg(long, env = "KURIR_DELIVERY_LEASE", default_value = "60s", value_parser = positive_duration)]
    pub delivery_lease: Duration,

    /// The relay's poll interval when no notification wakes it.
    #[arg(long, env = "KURIR_RELAY_INTERVAL", default_value = "1s", value_parser = positive_duration)]
    pub relay_interval: Duration,

    /// Rows the relay claims and publishes per round.
    #[arg(long, env = "KURIR_RELAY_BATCH", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub relay_batch: u32,

    /// The guard for published rows: a row still `queued` this long after
    /// its envelope was published (the broker lost the copy, or a consumer
    /// nobody reads holds it) is published again. Too short only costs
    /// duplicate envelopes, which workers drop.
    #[arg(long, env = "KURIR_REPUBLISH_AFTER", default_value = "5m", value_parser = positive_duration)]
    pub republish_after: Duration,
}

impl WorkerArgs {
    /// The lease must outlast a whole delivery: the provider call (plus the
    /// worker's one-second guard over it) and recording the outcome, or a
    /// live delivery could be handed to a second worker.
    pub fn check(&self, provider: &ProviderArgs, database: &DatabaseArgs) -> Result<(), String> {
        let needed = provider.call_limit() + database.db_timeout;
        if self.delivery_lease <= needed {
            return Err(format!(
                "KURIR_DELIVERY_LEASE ({}) must be longer than KURIR_PROVIDER_TIMEOUT + 1s + KURIR_DB_TIMEOUT ({})",
                humantime::format_duration(self.delivery_lease),
                humantime::format_duration(needed)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let provider: ProviderArgs = defaults();
        let worker: WorkerArgs = defaults();
        let retry: RetryArgs = defaults();
        assert_eq!(retry.retry_initial, Duration::from_secs(1));
        assert_eq!(retry.retry_max_interval, Duration::from_secs(600));
        assert_eq!(retry.retry_max_age, Duration::from_secs(24 * 3600));
        assert_eq!(worker.republish_after, Duration::from_secs(300));
        let database: DatabaseArgs = defaults();
        assert!(worker.check(&provider, &database).is_ok());
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

    #[test]
    fn bad_values_are_refused_naming_the_setting() {
        let command = RetryArgs::augment_args(clap::Command::new("kurir").no_binary_name(true));
        let err = command
            .try_get_matches_from(["--retry-jitter", "2"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--retry-jitter"), "{err}");
    }
}
