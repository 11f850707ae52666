//! kurir-bench's command line, and the settings a run derives from it.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use clap::Parser;

use crate::stack;

#[derive(Debug, Parser)]
#[command(name = "kurir-bench", about = "Measures kurir on this machine")]
pub(crate) struct Args {
    /// Directory with `kurir` and `kurir-sandbox` [default: this executable's directory]
    #[arg(long)]
    pub(crate) bin_dir: Option<PathBuf>,
    /// Postgres server; a fresh database `kurir_bench_<random>` is created on it
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/")]
    pub(crate) database_url: String,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub(crate) amqp_url: String,
    /// `kurir worker` processes [default: 1]
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// `KURIR_WORKER_CONCURRENCY` of each worker: deliveries in flight
    /// [default: not set, kurir's own default (256)]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub(crate) worker_concurrency: Option<u16>,
    /// Users created before sending [default: 100]
    #[arg(long)]
    pub(crate) users: Option<usize>,
    /// Single-message POSTs [default: 20000]
    #[arg(long)]
    pub(crate) messages: Option<usize>,
    /// Requests in flight (closed loop), or senders (open loop) [default: 64]
    #[arg(long)]
    pub(crate) concurrency: Option<usize>,
    /// Send N messages per request through `POST /v1/messages/batch`
    /// instead of single POSTs (accept latency is then per request)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub(crate) batch: Option<u16>,
    /// Send an `Idempotency-Key` with every request (one per batch request)
    #[arg(long)]
    pub(crate) idempotency_keys: bool,
    /// Offer a fixed rate of R requests/s instead of a closed loop
    #[arg(long, value_name = "R")]
    pub(crate) open_loop: Option<f64>,
    /// Send every single POST with `Prefer: wait=SECS`: each client holds
    /// its request until the message is sent (200) or SECS pass (202);
    /// accept latency is then the wait. Not with --batch
    #[arg(long, value_name = "SECS", conflicts_with = "batch",
          value_parser = clap::value_parser!(u64).range(1..=30))]
    pub(crate) prefer_wait: Option<u64>,
    /// The sandbox's answer delay
    #[arg(long, default_value_t = 0)]
    pub(crate) provider_latency_ms: u64,
    /// The api's `KURIR_INTAKE_RATE` (per-account intake limit, messages/s).
    /// 0, the default here, switches it off: the bench measures throughput;
    /// set one above the offered load to measure what the limiter costs
    #[arg(long, value_name = "R", default_value_t = 0)]
    pub(crate) intake_rate: u32,
    /// The api's `KURIR_INTAKE_BURST` [default: kurir's own (10000)]
    #[arg(long, value_name = "B")]
    pub(crate) intake_burst: Option<u32>,
    /// The sandbox posts signed `delivered` and `read` receipts for every
    /// message to the api's webhook (two POSTs a message), as WhatsApp
    /// does; CPU is then counted until every message is `read`
    #[arg(long)]
    pub(crate) receipts: bool,
    /// Also run the bare pipeline (after kurir) and report kurir's ratio to it
    #[arg(long)]
    pub(crate) reference: bool,
    /// Run kurir (then the reference, with --reference) N times, alternately,
    /// each round on a fresh stack, and report the median round (--smoke: 1)
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub(crate) rounds: u32,
    /// One JSON line with every figure on stdout instead of tables
    #[arg(long)]
    pub(crate) json: bool,
    /// Keep the stack running and the database for inspection
    #[arg(long)]
    pub(crate) keep: bool,
    /// CI preset: 300 messages, 10 users, concurrency 16, 1 worker, no
    /// reference, 1 round
    #[arg(long)]
    pub(crate) smoke: bool,
    /// Seconds to wait for every accepted message to be `sent`
    #[arg(long, default_value_t = 300)]
    pub(crate) timeout: u64,
    /// Remove what a `--keep` run left: drop database NAME and delete the
    /// queues and exchanges under prefix NAME (stop its processes first)
    #[arg(long, value_name = "NAME")]
    pub(crate) clean: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) bin_dir: PathBuf,
    pub(crate) workers: usize,
    pub(crate) users: usize,
    pub(crate) messages: usize,
    pub(crate) concurrency: usize,
    pub(crate) reference: bool,
    pub(crate) rounds: usize,
    pub(crate) worker_concurrency: Option<u16>,
}

impl Args {
    pub(crate) fn settings(&self) -> Result<Settings> {
        let preset = |explicit: Option<usize>, smoke: usize, default: usize| {
            explicit.unwrap_or(if self.smoke { smoke } else { default })
        };
        let s = Settings {
            bin_dir: match &self.bin_dir {
                Some(d) => d.clone(),
                None => stack::default_bin_dir()?,
            },
            workers: preset(self.workers, 1, 1),
            users: preset(self.users, 10, 100),
            messages: preset(self.messages, 300, 20_000),
            concurrency: preset(self.concurrency, 16, 64),
            reference: self.reference && !self.smoke,
            rounds: if self.smoke { 1 } else { self.rounds as usize },
            worker_concurrency: self.worker_concurrency,
        };
        if s.users == 0 || s.messages == 0 || s.concurrency == 0 || s.workers == 0 {
            return Err(anyhow!(
                "--users, --messages, --concurrency and --workers must be at least 1"
            ));
        }
        if let Some(r) = self.open_loop
            && !(r.is_finite() && r > 0.0)
        {
            return Err(anyhow!("--open-loop must be a positive rate, got {r}"));
        }
        if self.keep && s.rounds > 1 {
            return Err(anyhow!(
                "--keep keeps one stack: use it with --rounds 1 (the default)"
            ));
        }
        Ok(s)
    }
}
