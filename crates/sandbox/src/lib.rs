//! `kurir-sandbox`: a stand-in WhatsApp Cloud API server for tests, demos and
//! benchmarks.
//!
//! This crate owns:
//! - the fake Cloud API endpoints (`POST [/{version}]/{phone_number_id}/messages`
//!   and `.../whatsapp_business_profile`) with bearer auth and Meta-shaped errors;
//! - `text` and `template` sends. Templates are checked like Meta checks
//!   approved ones: a name that does not exist in `language.code` is 400/132001,
//!   a `body` component with the wrong number of parameters is 400/132000
//!   (header and button parameters are not counted), a malformed `template`
//!   object is 400/100. Built in: `hello_world` (`en_US`, no body parameters)
//!   and `order_update` (`en_US`, `id`; two). `KURIR_SANDBOX_TEMPLATES`
//!   (`--templates`) names a JSON file of more, read at start, e.g.
//!   `[{"name":"otp","languages":["en_US","id"],"body_parameters":1}]`
//!   (`body_parameters` defaults to 0; an entry replaces a built-in with the
//!   same name and language). A file that cannot be read or parsed stops the
//!   sandbox at start;
//! - failure injection: latency, random 500s (131000), random 429s (130429 with
//!   `Retry-After`), and magic recipients (`+15550000001` always 400/131026,
//!   `+15550000002` 503/131016 twice per message, then success,
//!   `+15550000003` outside the 24-hour window: `text` is 400/131047, templates
//!   are accepted). Template errors come first, so they use up no attempt;
//! - a record of every request (`GET`/`DELETE /__sandbox/messages`), with the
//!   body's `type` and the `template` as received, and runtime knobs
//!   (`GET`/`PATCH /__sandbox/config`);
//! - signed `delivered`/`read` receipt webhooks (`X-Hub-Signature-256`) for
//!   accepted messages, text and template alike.
//!
//! Tests start it in-process with [`start`] (port 0 works) and drive it through
//! the returned [`Sandbox`] handle; the binary uses [`run`].

mod config;
mod meta;
mod receipts;
mod record;
mod routes;
mod state;
mod templates;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{error, info, warn};

pub use config::{Config, ConfigError, DEFAULT_ADDR, DEFAULT_RECEIPT_DELAY_MS, Knobs};
pub use meta::codes;
pub use receipts::{
    SANDBOX_DISPLAY_PHONE_NUMBER, SANDBOX_WABA_ID, SIGNATURE_HEADER, business_scoped_id, signature,
};
pub use record::{RecordedRequest, RequestKind};
pub use state::{MAGIC_FLAKY, MAGIC_OUTSIDE_WINDOW, MAGIC_UNDELIVERABLE};

use crate::receipts::Receipts;
use crate::state::AppState;

/// The API version segment used by [`Sandbox::base_url`].
pub const API_VERSION: &str = "v25.0";

/// A running sandbox. Dropping it stops the server (without waiting);
/// [`Sandbox::shutdown`] stops it and waits.
#[derive(Debug)]
pub struct Sandbox {
    addr: SocketAddr,
    state: Arc<AppState>,
    server: Option<JoinHandle<()>>,
    _stop_on_drop: DropGuard,
}

/// Binds `config.addr`, spawns the server and returns at once.
///
/// Fails with `InvalidInput` when the config does not validate (including a
/// templates file that cannot be read or parsed), or with the bind error.
pub async fn start(config: Config) -> std::io::Result<Sandbox> {
    let templates = config
        .checked()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = TcpListener::bind(config.addr).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();

    let receipts = match config.receipts_target() {
        Some((url, secret)) => {
            let delay = Duration::from_millis(config.receipt_delay_ms);
            Some(Arc::new(Receipts::new(
                url,
                secret,
                delay,
                shutdown.clone(),
            )?))
        }
        None => {
            if config.receipts_url.is_some() != config.app_secret.is_some() {
                warn!(
                    "receipts disabled: set both KURIR_SANDBOX_RECEIPTS_URL and KURIR_SANDBOX_APP_SECRET"
                );
            }
            None
        }
    };
    let state = Arc::new(AppState::new(
        &config,
        templates,
        receipts,
        shutdown.clone(),
    ));
    let router = routes::router(Arc::clone(&state));
    let server = tokio::spawn(serve(listener, router, Arc::clone(&state)));

    Ok(Sandbox {
        addr,
        state,
        server: Some(server),
        _stop_on_drop: shutdown.drop_guard(),
    })
}

async fn serve(listener: TcpListener, router: axum::Router, state: Arc<AppState>) {
    let stop = state.shutdown.clone();
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        error!(error = %e, "kurir-sandbox server failed");
    }
    // Make sure receipt tasks stop even if the server ended on its own.
    state.shutdown.cancel();
    if let Some(receipts) = &state.receipts {
        receipts.close().await;
    }
}

/// Runs the sandbox until `shutdown` is cancelled, then stops gracefully.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let receipts = config.receipts_target().map(|(url, _)| url);
    let sandbox = start(config)
        .await
        .context("kurir-sandbox could not start")?;
    info!(
        addr = %sandbox.addr(),
        base_url = %sandbox.base_url(),
        receipts_url = receipts.as_deref().unwrap_or("-"),
        "kurir-sandbox listening"
    );
    shutdown.cancelled().await;
    info!("kurir-sandbox shutting down");
    sandbox.shutdown().await;
    Ok(())
}

impl Sandbox {
    /// The bound address (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>/v25.0`, ready to use as the WhatsApp base URL.
    /// An unspecified listen IP (0.0.0.0, ::) is shown as loopback.
    pub fn base_url(&self) -> String {
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        format!("http://{addr}/{API_VERSION}")
    }

    /// Every recorded request, in arrival order (same as `GET /__sandbox/messages`).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.recorder.snapshot()
    }

    /// Forgets the recorded requests (same as `DELETE /__sandbox/messages`).
    /// Magic-recipient attempt counts are kept.
    pub fn clear(&self) {
        self.state.recorder.clear();
    }

    /// The current runtime knobs.
    pub fn knobs(&self) -> Knobs {
        self.state.knobs()
    }

    pub fn set_latency_ms(&self, latency_ms: u64) {
        self.set(|k| Knobs { latency_ms, ..k });
    }

    /// Clamped into [0, 1] (NaN counts as 0).
    pub fn set_fail_rate(&self, fail_rate: f64) {
        let fail_rate = config::clamp_rate(fail_rate);
        self.set(|k| Knobs { fail_rate, ..k });
    }

    /// Clamped into [0, 1] (NaN counts as 0).
    pub fn set_throttle_rate(&self, throttle_rate: f64) {
        let throttle_rate = config::clamp_rate(throttle_rate);
        self.set(|k| Knobs { throttle_rate, ..k });
    }

    pub fn set_retry_after_secs(&self, retry_after_secs: u64) {
        self.set(|k| Knobs {
            retry_after_secs,
            ..k
        });
    }

    fn set(&self, f: impl FnOnce(Knobs) -> Knobs) {
        let _ = self
            .state
            .update_knobs(|k| Ok::<_, std::convert::Infallible>(f(k)));
    }

    /// Stops accepting, finishes in-flight requests, stops receipt tasks, and waits.
    pub async fn shutdown(mut self) {
        self.state.shutdown.cancel();
        if let Some(server) = self.server.take()
            && let Err(e) = server.await
        {
            error!(error = %e, "kurir-sandbox server task failed");
        }
    }
}
