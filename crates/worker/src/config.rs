//! Everything `kurir worker` reads: the shared settings
//! (`kurir_core::config`) and the worker's own, the provider's and the retry
//! schedule's. Each is a flag and an environment variable with a documented
//! default (docs/configuration.md has what each one is for), checked when the
//! process starts; what no setting can check alone (the lease against the
//! timeouts) is [`WorkerArgs::check`].

use std::{net::SocketAddr, time::Duration};

use clap::{Args, ValueEnum};
use kurir_core::config::{BusArgs, DatabaseArgs, ShutdownArgs, positive_duration};

/// Everything `kurir worker` reads (its command line and environment).
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub bus: BusArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub provider: ProviderArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
}

/// The worker's own settings, without the shared ones: what `kurir dev`
/// adds to the API's.
#[derive(Debug, Clone, Args)]
pub struct OwnArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub provider: ProviderArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
}

impl OwnArgs {
    /// The whole configuration, with the shared settings of another process
    /// (the API's, in `kurir dev`).
    pub fn with(self, database: DatabaseArgs, bus: BusArgs, shutdown: ShutdownArgs) -> Config {
        Config {
            database,
            bus,
            shutdown,
            worker: self.worker,
            provider: self.provider,
            retry: self.retry,
        }
    }
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

    /// Address of the worker's health endpoints (`/healthz`, `/readyz`, `/metrics`).
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

    /// How long a relay owns the rows it is publishing before another relay
    /// may take them.
    // The API needs no lease: the rows it publishes itself are stored as
    // published, and the guard covers its crash.
    #[arg(long, env = "KURIR_PUBLISH_LEASE", default_value = "10s", value_parser = positive_duration)]
    pub publish_lease: Duration,

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

/// Which provider the worker delivers through (docs/configuration.md,
/// "Providers"). The variants have no doc comments on purpose: clap would
/// print them under the option, in `--help`'s long form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderKind {
    // Accepts and logs; no network. The default, so a first run works.
    Log,
    // The WhatsApp Cloud API (or kurir-sandbox, which speaks it).
    Whatsapp,
    // A signed JSON POST to one URL.
    Webhook,
}

/// Provider settings.
#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// What the worker delivers through.
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

#[cfg(test)]
mod tests {
    use clap::Args;
    use kurir_core::config::defaults;

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
    fn a_lease_shorter_than_one_delivery_is_refused_naming_both_sides() {
        let provider: ProviderArgs = defaults();
        let database: DatabaseArgs = defaults();
        let mut worker: WorkerArgs = defaults();
        worker.delivery_lease = provider.call_limit() + database.db_timeout;
        let err = worker.check(&provider, &database).unwrap_err();
        assert!(
            err.starts_with("KURIR_DELIVERY_LEASE (16s) must be longer than"),
            "{err}"
        );
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
