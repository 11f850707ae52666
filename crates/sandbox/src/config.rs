//! Start-up configuration (flags + env) and the knobs that can change at runtime.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::templates::Templates;

/// The default listen address, `127.0.0.1:9090`.
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

/// Default pause before each receipt (delivered, then read), in milliseconds.
pub const DEFAULT_RECEIPT_DELAY_MS: u64 = 50;

/// Everything the sandbox is started with. Each field is a flag and an env var.
#[derive(clap::Args, Debug, Clone)]
pub struct Config {
    /// Address the sandbox listens on (port 0 picks a free port).
    #[arg(long, env = "KURIR_SANDBOX_ADDR", default_value = "127.0.0.1:9090",
          value_parser = parse_addr)]
    pub addr: SocketAddr,

    /// Bearer token callers must present. Unset: any non-empty bearer is accepted.
    #[arg(long, env = "KURIR_SANDBOX_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Delay added to every send/profile request, in milliseconds.
    #[arg(long, env = "KURIR_SANDBOX_LATENCY_MS", default_value_t = 0,
          value_parser = |s: &str| parse_u64("KURIR_SANDBOX_LATENCY_MS", s))]
    pub latency_ms: u64,

    /// Share (0-1) of requests answered HTTP 500, code 131000.
    #[arg(long, env = "KURIR_SANDBOX_FAIL_RATE", default_value_t = 0.0,
          value_parser = |s: &str| parse_rate("KURIR_SANDBOX_FAIL_RATE", s))]
    pub fail_rate: f64,

    /// Share (0-1) of requests answered HTTP 429, code 130429, with Retry-After.
    #[arg(long, env = "KURIR_SANDBOX_THROTTLE_RATE", default_value_t = 0.0,
          value_parser = |s: &str| parse_rate("KURIR_SANDBOX_THROTTLE_RATE", s))]
    pub throttle_rate: f64,

    /// The seconds put in the Retry-After header of throttled answers.
    #[arg(long, env = "KURIR_SANDBOX_RETRY_AFTER_SECS", default_value_t = 1,
          value_parser = |s: &str| parse_u64("KURIR_SANDBOX_RETRY_AFTER_SECS", s))]
    pub retry_after_secs: u64,

    /// Where signed delivered/read receipts are POSTed (needs the app secret too).
    #[arg(long, env = "KURIR_SANDBOX_RECEIPTS_URL")]
    pub receipts_url: Option<String>,

    /// HMAC-SHA256 key for the X-Hub-Signature-256 header of receipts.
    #[arg(long, env = "KURIR_SANDBOX_APP_SECRET", hide_env_values = true)]
    pub app_secret: Option<String>,

    /// Pause before each receipt (delivered, then read), in milliseconds.
    #[arg(long, env = "KURIR_SANDBOX_RECEIPT_DELAY_MS", default_value_t = DEFAULT_RECEIPT_DELAY_MS,
          value_parser = |s: &str| parse_u64("KURIR_SANDBOX_RECEIPT_DELAY_MS", s))]
    pub receipt_delay_ms: u64,

    /// JSON file of approved templates added to the built-in ones, e.g.
    /// [{"name":"otp","languages":["en_US","id"],"body_parameters":1}].
    #[arg(long, env = "KURIR_SANDBOX_TEMPLATES")]
    pub templates: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            addr: DEFAULT_ADDR,
            token: None,
            latency_ms: 0,
            fail_rate: 0.0,
            throttle_rate: 0.0,
            retry_after_secs: 1,
            receipts_url: None,
            app_secret: None,
            receipt_delay_ms: DEFAULT_RECEIPT_DELAY_MS,
            templates: None,
        }
    }
}

/// A configuration value that cannot be used; the message names the variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Checks what clap cannot (for configs built in code): rates in [0, 1],
    /// a parseable receipts URL, a readable and well-formed templates file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.checked().map(drop)
    }

    /// [`Config::validate`], handing back the templates it loaded so that
    /// start-up reads the file once.
    pub(crate) fn checked(&self) -> Result<Templates, ConfigError> {
        check_rate("KURIR_SANDBOX_FAIL_RATE", self.fail_rate).map_err(ConfigError)?;
        check_rate("KURIR_SANDBOX_THROTTLE_RATE", self.throttle_rate).map_err(ConfigError)?;
        if let Some(url) = non_empty(&self.receipts_url) {
            match reqwest::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                Ok(_) => {
                    return Err(ConfigError(format!(
                        "KURIR_SANDBOX_RECEIPTS_URL must be an http(s) URL, got {url:?}"
                    )));
                }
                Err(e) => {
                    return Err(ConfigError(format!(
                        "KURIR_SANDBOX_RECEIPTS_URL is not a valid URL ({e}): {url:?}"
                    )));
                }
            }
        }
        Templates::load(self.templates_path()).map_err(ConfigError)
    }

    /// The templates file, an empty path counting as unset (like an empty
    /// env var for the other settings).
    fn templates_path(&self) -> Option<&Path> {
        self.templates
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty())
    }

    /// The configured token, empty counting as unset.
    pub(crate) fn effective_token(&self) -> Option<String> {
        non_empty(&self.token).map(str::to_owned)
    }

    /// `(url, secret)` when receipts are enabled (both set and non-empty).
    pub(crate) fn receipts_target(&self) -> Option<(String, String)> {
        match (non_empty(&self.receipts_url), non_empty(&self.app_secret)) {
            (Some(url), Some(secret)) => Some((url.to_owned(), secret.to_owned())),
            _ => None,
        }
    }

    /// The runtime knobs this config starts with.
    pub fn knobs(&self) -> Knobs {
        Knobs {
            latency_ms: self.latency_ms,
            fail_rate: self.fail_rate,
            throttle_rate: self.throttle_rate,
            retry_after_secs: self.retry_after_secs,
        }
    }
}

/// The knobs that can be changed while the sandbox runs (`PATCH /__sandbox/config`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Knobs {
    pub latency_ms: u64,
    pub fail_rate: f64,
    pub throttle_rate: f64,
    pub retry_after_secs: u64,
}

/// A partial update of [`Knobs`]; unknown fields are rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KnobsPatch {
    latency_ms: Option<u64>,
    fail_rate: Option<f64>,
    throttle_rate: Option<f64>,
    retry_after_secs: Option<u64>,
}

impl KnobsPatch {
    /// The knobs after this patch, or why the patch is refused (nothing applied).
    pub(crate) fn apply(&self, mut knobs: Knobs) -> Result<Knobs, String> {
        if let Some(rate) = self.fail_rate {
            check_rate("fail_rate", rate)?;
            knobs.fail_rate = rate;
        }
        if let Some(rate) = self.throttle_rate {
            check_rate("throttle_rate", rate)?;
            knobs.throttle_rate = rate;
        }
        if let Some(ms) = self.latency_ms {
            knobs.latency_ms = ms;
        }
        if let Some(secs) = self.retry_after_secs {
            knobs.retry_after_secs = secs;
        }
        Ok(knobs)
    }
}

/// Clamps a rate into [0, 1]; NaN becomes 0. Used by the infallible handle setters.
pub(crate) fn clamp_rate(rate: f64) -> f64 {
    if rate.is_nan() {
        0.0
    } else {
        rate.clamp(0.0, 1.0)
    }
}

fn check_rate(name: &str, rate: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!(
            "{name} must be a number between 0 and 1, got {rate}"
        ))
    }
}

fn non_empty(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|e| format!("KURIR_SANDBOX_ADDR must be host:port such as 127.0.0.1:9090 ({e})"))
}

fn parse_u64(name: &str, s: &str) -> Result<u64, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{name} must be a whole number >= 0, got {s:?}"))
}

fn parse_rate(name: &str, s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{name} must be a number between 0 and 1, got {s:?}"))?;
    check_rate(name, rate)?;
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn clap_defaults_match_default_impl() {
        let cli = Cli::try_parse_from(["kurir-sandbox"]).expect("defaults parse");
        let d = Config::default();
        assert_eq!(cli.config.addr, d.addr);
        assert_eq!(cli.config.latency_ms, d.latency_ms);
        assert_eq!(cli.config.fail_rate, d.fail_rate);
        assert_eq!(cli.config.throttle_rate, d.throttle_rate);
        assert_eq!(cli.config.retry_after_secs, d.retry_after_secs);
        assert_eq!(cli.config.receipt_delay_ms, d.receipt_delay_ms);
        assert_eq!(d.addr.to_string(), "127.0.0.1:9090");
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "kurir-sandbox",
            "--addr=127.0.0.1:0",
            "--fail-rate=0.25",
            "--throttle-rate=1",
            "--latency-ms=5",
            "--retry-after-secs=7",
        ])
        .expect("parse");
        assert_eq!(cli.config.addr.port(), 0);
        assert_eq!(cli.config.fail_rate, 0.25);
        assert_eq!(cli.config.throttle_rate, 1.0);
        assert_eq!(cli.config.latency_ms, 5);
        assert_eq!(cli.config.retry_after_secs, 7);
    }

    #[test]
    fn bad_rate_is_refused_naming_the_variable() {
        for (flag, var) in [
            ("--fail-rate=1.5", "KURIR_SANDBOX_FAIL_RATE"),
            ("--throttle-rate=-0.1", "KURIR_SANDBOX_THROTTLE_RATE"),
            ("--fail-rate=lots", "KURIR_SANDBOX_FAIL_RATE"),
        ] {
            let err = Cli::try_parse_from(["kurir-sandbox", flag]).expect_err(flag);
            let first = err
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned();
            assert!(first.contains(var), "{first}");
        }
    }

    #[test]
    fn validate_checks_rates_and_url() {
        assert!(Config::default().validate().is_ok());
        let bad = Config {
            fail_rate: 2.0,
            ..Config::default()
        };
        assert!(
            bad.validate()
                .expect_err("rate")
                .0
                .contains("KURIR_SANDBOX_FAIL_RATE")
        );
        let bad = Config {
            throttle_rate: f64::NAN,
            ..Config::default()
        };
        assert!(bad.validate().is_err());
        let bad = Config {
            receipts_url: Some("not a url".into()),
            ..Config::default()
        };
        assert!(
            bad.validate()
                .expect_err("url")
                .0
                .contains("KURIR_SANDBOX_RECEIPTS_URL")
        );
    }

    #[test]
    fn templates_file_is_loaded_at_validation() {
        use crate::templates::tests::TempFile;

        let cli = Cli::try_parse_from(["kurir-sandbox", "--templates=/x/t.json"]).expect("parse");
        assert_eq!(cli.config.templates, Some(PathBuf::from("/x/t.json")));
        assert!(Config::default().checked().is_ok(), "built-ins only");
        let empty = Config {
            templates: Some(PathBuf::new()),
            ..Config::default()
        };
        assert!(empty.validate().is_ok(), "an empty path counts as unset");

        let good = TempFile::new(r#"[{"name":"otp","languages":["id"],"body_parameters":1}]"#);
        let config = Config {
            templates: Some(good.0.clone()),
            ..Config::default()
        };
        let templates = config.checked().expect("valid file");
        assert!(templates.check("otp", "id", 1).is_ok());
        assert!(templates.check("hello_world", "en_US", 0).is_ok());

        let unparseable = TempFile::new(r#"[{"name":"otp"#);
        let missing = std::env::temp_dir().join("kurir-sandbox-missing-templates.json");
        for path in [unparseable.0.clone(), missing] {
            let bad = Config {
                templates: Some(path.clone()),
                ..Config::default()
            };
            let e = bad.validate().expect_err("bad file");
            assert!(e.0.starts_with("KURIR_SANDBOX_TEMPLATES: "), "{e}");
            assert!(e.0.contains(&path.display().to_string()), "{e}");
            assert_eq!(e.0.lines().count(), 1, "one line: {e}");
        }
    }

    #[test]
    fn receipts_need_both_url_and_secret() {
        let only_url = Config {
            receipts_url: Some("http://x/".into()),
            ..Config::default()
        };
        assert!(only_url.receipts_target().is_none());
        let both = Config {
            app_secret: Some("s".into()),
            ..only_url
        };
        assert!(both.receipts_target().is_some());
    }

    #[test]
    fn patch_applies_all_or_nothing() {
        let knobs = Config::default().knobs();
        let patch: KnobsPatch =
            serde_json::from_str(r#"{"latency_ms":3,"fail_rate":1.5}"#).expect("json");
        assert!(patch.apply(knobs).is_err());
        let patch: KnobsPatch = serde_json::from_str(r#"{"throttle_rate":0.5}"#).expect("json");
        let next = patch.apply(knobs).expect("ok");
        assert_eq!(next.throttle_rate, 0.5);
        assert_eq!(next.latency_ms, 0);
        assert_eq!(clamp_rate(f64::NAN), 0.0);
        assert_eq!(clamp_rate(3.0), 1.0);
    }
}
