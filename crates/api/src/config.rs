//! Everything `kurir api` reads: the shared settings (`kurir_core::config`)
//! and the API's own, with the receipts webhook's and the default intake
//! limit's. Each is a flag and an environment variable with a documented
//! default (docs/configuration.md has what each one is for), checked when the
//! process starts.

use std::{net::SocketAddr, time::Duration};

use clap::Args;
use kurir_core::{
    IntakeLimit,
    config::{BusArgs, DatabaseArgs, ShutdownArgs, duration, positive_duration},
    intake::{MAX_BURST, MAX_RATE},
};

/// Everything `kurir api` reads (its command line and environment).
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub bus: BusArgs,
    #[command(flatten)]
    pub shutdown: ShutdownArgs,
    #[command(flatten)]
    pub api: ApiArgs,
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
          value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_RATE)), global = true)]
    pub intake_rate: u32,

    /// Messages an account may have accepted at once: the bucket's size. A
    /// batch counts its items, so this is also the largest batch it can send.
    #[arg(long, env = "KURIR_INTAKE_BURST", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_BURST)), global = true)]
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

#[cfg(test)]
mod tests {
    use kurir_core::config::defaults;

    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let api: ApiArgs = defaults();
        assert_eq!(api.api_addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(api.max_body_bytes, 1024 * 1024);
        assert_eq!(api.key_cache_ttl, Duration::from_secs(5));
        assert_eq!(
            api.intake.limit(),
            IntakeLimit {
                rate: 1000,
                burst: 10_000
            }
        );
    }
}
