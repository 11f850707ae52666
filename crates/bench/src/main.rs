//! kurir-bench: starts a kurir stack of its own (fresh database, queue
//! prefix, sandbox, api, workers), drives single-message POSTs through it,
//! waits until Postgres says every message is `sent`, and reports rates,
//! latencies, CPU per message and peak RSS by process; with `--reference`
//! also a bare pipeline (`reference`) on the same Postgres and RabbitMQ, and
//! kurir's ratio to it. `--rounds N` repeats that N times, alternately,
//! and reports the median.

mod load;
mod procfs;
mod progress;
mod reference;
mod report;
mod stack;
mod stats;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use clap::Parser;

use procfs::{Group, Select};
use progress::Progress;
use report::{Header, ProcFigures, Report, Round, RunFigures, per_msg_us};
use stack::Stack;

#[derive(Debug, Parser)]
#[command(name = "kurir-bench", about = "Measures kurir on this machine")]
struct Args {
    /// Directory with `kurir` and `kurir-sandbox` [default: this executable's directory]
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Postgres server; a fresh database `kurir_bench_<random>` is created on it
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/")]
    database_url: String,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// `kurir worker` processes [default: 1]
    #[arg(long)]
    workers: Option<usize>,
    /// `KURIR_WORKER_CONCURRENCY` of each worker: deliveries in flight
    /// [default: not set, kurir's own default (256)]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=10_000))]
    worker_concurrency: Option<u16>,
    /// Users created before sending [default: 100]
    #[arg(long)]
    users: Option<usize>,
    /// Single-message POSTs [default: 20000]
    #[arg(long)]
    messages: Option<usize>,
    /// Requests in flight (closed loop), or senders (open loop) [default: 64]
    #[arg(long)]
    concurrency: Option<usize>,
    /// Send N messages per request through `POST /v1/messages/batch`
    /// instead of single POSTs (accept latency is then per request)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1000))]
    batch: Option<u16>,
    /// Send an `Idempotency-Key` with every request (one per batch request)
    #[arg(long)]
    idempotency_keys: bool,
    /// Offer a fixed rate of R requests/s instead of a closed loop
    #[arg(long, value_name = "R")]
    open_loop: Option<f64>,
    /// Send every single POST with `Prefer: wait=SECS`: each client holds
    /// its request until the message is sent (200) or SECS pass (202);
    /// accept latency is then the wait. Not with --batch
    #[arg(long, value_name = "SECS", conflicts_with = "batch",
          value_parser = clap::value_parser!(u64).range(1..=30))]
    prefer_wait: Option<u64>,
    /// The sandbox's answer delay
    #[arg(long, default_value_t = 0)]
    provider_latency_ms: u64,
    /// The api's `KURIR_INTAKE_RATE` (per-account intake limit, messages/s).
    /// 0, the default here, switches it off: the bench measures throughput;
    /// set one above the offered load to measure what the limiter costs
    #[arg(long, value_name = "R", default_value_t = 0)]
    intake_rate: u32,
    /// The api's `KURIR_INTAKE_BURST` [default: kurir's own (10000)]
    #[arg(long, value_name = "B")]
    intake_burst: Option<u32>,
    /// The sandbox posts signed `delivered` and `read` receipts for every
    /// message to the api's webhook (two POSTs a message), as WhatsApp
    /// does; CPU is then counted until every message is `read`
    #[arg(long)]
    receipts: bool,
    /// Also run the bare pipeline (after kurir) and report kurir's ratio to it
    #[arg(long)]
    reference: bool,
    /// Run kurir (then the reference, with --reference) N times, alternately,
    /// each round on a fresh stack, and report the median round (--smoke: 1)
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: u32,
    /// One JSON line with every figure on stdout instead of tables
    #[arg(long)]
    json: bool,
    /// Keep the stack running and the database for inspection
    #[arg(long)]
    keep: bool,
    /// CI preset: 300 messages, 10 users, concurrency 16, 1 worker, no
    /// reference, 1 round
    #[arg(long)]
    smoke: bool,
    /// Seconds to wait for every accepted message to be `sent`
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Remove what a `--keep` run left: drop database NAME and delete the
    /// queues and exchanges under prefix NAME (stop its processes first)
    #[arg(long, value_name = "NAME")]
    clean: Option<String>,
}

#[derive(Debug, Clone)]
struct Settings {
    bin_dir: PathBuf,
    workers: usize,
    users: usize,
    messages: usize,
    concurrency: usize,
    reference: bool,
    rounds: usize,
    worker_concurrency: Option<u16>,
}

impl Args {
    fn settings(&self) -> Result<Settings> {
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

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kurir-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(real_main(args))
}

async fn real_main(args: Args) -> std::process::ExitCode {
    if let Some(name) = &args.clean {
        if !name.starts_with("kurir_bench_") {
            eprintln!("kurir-bench: --clean only removes kurir_bench_* databases and prefixes");
            return std::process::ExitCode::from(2);
        }
        return match stack::clean(
            &args.database_url,
            &args.amqp_url,
            name,
            &[reference::queue_name(name)],
        )
        .await
        {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kurir-bench: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kurir-bench: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    // Ctrl-C is caught once for the whole bench: the round under way is
    // dropped, its stack cleaned up, and no further round starts.
    let (interrupt_tx, interrupt) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = interrupt_tx.send(true);
        }
    });
    let header = Header {
        workers: settings.workers,
        worker_concurrency: settings.worker_concurrency,
        users: settings.users,
        concurrency: settings.concurrency,
        open_loop_rate: args.open_loop,
        prefer_wait: args.prefer_wait,
        provider_latency_ms: args.provider_latency_ms,
        intake_rate: args.intake_rate,
        intake_burst: args.intake_burst,
        cores: std::thread::available_parallelism().map_or(0, usize::from),
    };
    eprintln!("kurir-bench: {}", header_line(&args, &settings));
    let mut rounds: Vec<Round> = Vec::new();
    let mut errors = Vec::new();
    for n in 1..=settings.rounds {
        if *interrupt.borrow() {
            errors.push("interrupted".to_owned());
            break;
        }
        let round = Numbered {
            n,
            of: settings.rounds,
        };
        let mut stack =
            match Stack::new(settings.bin_dir.clone(), &args.database_url, &args.amqp_url) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("kurir-bench: {e:#}");
                    errors.push(format!("{e:#}"));
                    break;
                }
            };
        eprintln!(
            "kurir-bench: {}database {}, queue prefix {}, logs in {}",
            round.tag(),
            stack.database,
            stack.prefix,
            stack.logs.display()
        );
        let mut interrupted = interrupt.clone();
        let result = tokio::select! {
            r = run_round(&args, &settings, &mut stack, round) => r,
            _ = interrupted.wait_for(|v| *v) => Err(anyhow!("interrupted")),
        };
        if args.keep {
            print_kept(&stack);
        } else {
            eprintln!(
                "kurir-bench: stopping the stack, dropping {}",
                stack.database
            );
            stack.cleanup(&[reference::queue_name(&stack.prefix)]).await;
            eprintln!("kurir-bench: logs are in {}", stack.logs.display());
        }
        match result {
            Ok(r) => {
                let failed = !r.failures.is_empty();
                rounds.push(r);
                if failed {
                    if n < settings.rounds {
                        eprintln!("kurir-bench: round {n} failed, no further rounds");
                    }
                    break;
                }
            }
            Err(e) => {
                eprintln!("kurir-bench: {e:#}");
                errors.push(if settings.rounds > 1 {
                    format!("round {n}: {e:#}")
                } else {
                    format!("{e:#}")
                });
                break;
            }
        }
    }
    if rounds.is_empty() {
        // Nothing measured: the error is on stderr already.
        return std::process::ExitCode::FAILURE;
    }
    let report = Report::new(header, rounds, errors);
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        serde_json::to_string(&report)
            .map_err(std::io::Error::other)
            .and_then(|line| writeln!(out, "{line}"))
    } else {
        write!(out, "{}", report.to_text())
    };
    if let Err(e) = written {
        eprintln!("kurir-bench: writing the report: {e}");
    }
    if report.ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// The run's settings, once at the start.
fn header_line(args: &Args, settings: &Settings) -> String {
    let mut load = match args.open_loop {
        Some(r) => format!("open loop at {r}/s with {} senders", settings.concurrency),
        None => format!("concurrency {}", settings.concurrency),
    };
    if let Some(wait) = args.prefer_wait {
        load.push_str(&format!(", Prefer: wait={wait}"));
    }
    if args.receipts {
        load.push_str(", sandbox receipts on");
    }
    format!(
        "{} messages, {} users, {load}, {} worker(s), worker concurrency {}, provider latency {} ms, intake limit {}, rounds {}{}",
        settings.messages,
        settings.users,
        settings.workers,
        settings
            .worker_concurrency
            .map_or_else(|| "kurir's default".to_owned(), |c| c.to_string()),
        args.provider_latency_ms,
        match (args.intake_rate, args.intake_burst) {
            (0, _) => "off".to_owned(),
            (rate, Some(burst)) => format!("{rate}/s, burst {burst}"),
            (rate, None) => format!("{rate}/s, kurir's default burst"),
        },
        settings.rounds,
        if settings.reference {
            " (kurir, then the reference)"
        } else {
            ""
        }
    )
}

fn print_kept(stack: &Stack) {
    eprintln!(
        "kurir-bench: kept: api {} (key {}), DATABASE_URL={} KURIR_QUEUE_PREFIX={}, logs {}; pids {:?}",
        stack.api_url,
        stack.key,
        stack.database_url,
        stack.prefix,
        stack.logs.display(),
        stack
            .children
            .iter()
            .map(|c| (&c.name, c.pid))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "kurir-bench: afterwards: kill {}; kurir-bench --clean {}",
        stack
            .children
            .iter()
            .map(|c| c.pid.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        stack.database
    );
}

/// Which round of how many, for status lines and progress labels.
#[derive(Debug, Clone, Copy)]
struct Numbered {
    n: usize,
    of: usize,
}

impl Numbered {
    /// `round 2 of 3: ` when there are several, else nothing.
    fn tag(self) -> String {
        if self.of > 1 {
            format!("round {} of {}: ", self.n, self.of)
        } else {
            String::new()
        }
    }

    /// A progress label: `round 2/3 sent` when there are several.
    fn label(self, phase: &str) -> String {
        if self.of > 1 {
            format!("round {}/{} {phase}", self.n, self.of)
        } else {
            phase.to_owned()
        }
    }

    /// The longest label of a round, so that its bars line up.
    fn label_width(self) -> usize {
        self.label("reference consumed").chars().count()
    }
}

/// Samples `groups` every 200 ms until aborted.
fn sampler(groups: Arc<Mutex<Vec<Group>>>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let groups = groups.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Ok(mut g) = groups.lock() {
                    g.iter_mut().for_each(Group::sample);
                }
            })
            .await;
        }
    })
}

/// Stops the sampler and takes the groups, after a last sample.
async fn stop_sampling(
    sampling: tokio::task::JoinHandle<()>,
    groups: &Mutex<Vec<Group>>,
) -> Result<Vec<Group>> {
    sampling.abort();
    let _ = sampling.await;
    let mut groups = std::mem::take(&mut *groups.lock().map_err(|_| anyhow!("sampler panicked"))?);
    groups.iter_mut().for_each(Group::finish);
    Ok(groups)
}

fn server_groups() -> Vec<Group> {
    let mut groups = Vec::new();
    for (name, user, exe) in [
        ("postgres", "postgres", "postgres"),
        ("rabbitmq", "rabbitmq", "beam.smp"),
    ] {
        match procfs::uid_of(user) {
            Some(uid) => groups.push(Group::new(name, Select::Server { uid, name: exe })),
            None => eprintln!("warning: no user {user}: its server's CPU is not measured"),
        }
    }
    groups
}

fn figures(groups: &[Group], messages: u64, ticks_per_s: f64, excluded: &str) -> Vec<ProcFigures> {
    groups
        .iter()
        .map(|g| {
            let cpu_s = g.cpu_ticks() as f64 / ticks_per_s;
            let (rss_kb, rss_source) = match g.hwm_kb {
                Some(hwm) => (Some(hwm), "VmHWM"),
                None => ((g.processes_seen() > 0).then_some(g.peak_rss_kb), "sampled"),
            };
            ProcFigures {
                name: g.name.clone(),
                processes: g.processes_seen(),
                cpu_s,
                cpu_us_per_msg: per_msg_us(cpu_s, messages),
                peak_rss_mb: rss_kb.map(|kb| kb as f64 / 1024.0),
                rss_source,
                in_total: g.name != excluded,
            }
        })
        .collect()
}

fn ms(v: Option<f64>) -> Option<f64> {
    v.map(|s| s * 1000.0)
}

/// One round on `stack`: kurir, then the reference with `--reference`. An
/// error when the bench itself could not go on; what kurir got wrong (not
/// accepted, not sent in time, a child died) is in the round's failures.
async fn run_round(
    args: &Args,
    settings: &Settings,
    stack: &mut Stack,
    round: Numbered,
) -> Result<Round> {
    let ticks_per_s = procfs::clock_ticks_per_second() as f64;
    let mut failures = Vec::new();
    let m = settings.messages;

    eprintln!(
        "kurir-bench: {}starting {} (migrate, key, sandbox, api, {} worker(s))",
        round.tag(),
        settings.bin_dir.display(),
        settings.workers
    );
    let mut api_env = vec![("KURIR_INTAKE_RATE", args.intake_rate.to_string())];
    if let Some(burst) = args.intake_burst {
        api_env.push(("KURIR_INTAKE_BURST", burst.to_string()));
    }
    stack
        .start(
            settings.workers,
            args.provider_latency_ms,
            settings.worker_concurrency,
            &api_env,
            args.receipts,
        )
        .await?;
    eprintln!("kurir-bench: stack ready, api at {}", stack.api_url);

    let load = Arc::new(
        load::Load::new(
            &stack.api_url,
            &stack.key,
            settings.concurrency,
            args.prefer_wait,
        )?
        .with_idempotency_keys(args.idempotency_keys),
    );
    eprintln!("kurir-bench: creating {} users", settings.users);
    load.create_users(settings.users).await?;

    let mut groups: Vec<Group> = stack
        .pids("")
        .into_iter()
        .map(|(name, pid)| Group::new(name, Select::Pids(vec![pid])))
        .collect();
    groups.extend(server_groups());
    groups.push(Group::new("bench", Select::Pids(vec![std::process::id()])));
    let groups = Arc::new(Mutex::new(groups));
    let sampling = sampler(groups.clone());

    let mut mode = match args.open_loop {
        Some(r) => format!("open loop at {r}/s with {} senders", settings.concurrency),
        None => format!("concurrency {}", settings.concurrency),
    };
    if let Some(batch) = args.batch {
        mode.push_str(&format!(", {batch} per batch request"));
    }
    if args.idempotency_keys {
        mode.push_str(", an Idempotency-Key on every request");
    }
    if let Some(wait) = args.prefer_wait {
        mode.push_str(&format!(", each with Prefer: wait={wait}"));
    }
    eprintln!(
        "kurir-bench: sending {m} messages to {} users, {mode}",
        settings.users
    );
    let load_started = Instant::now();
    let accepting = Progress::start(
        &round.label("accepted"),
        round.label_width(),
        m as u64,
        load_started,
    );
    let sent = tokio::select! {
        r = load.clone().send(m, settings.users, settings.concurrency, args.open_loop, args.batch.map(usize::from), accepting.counter()) => r,
        e = stack.watch() => Err(e),
    };
    accepting.finish();
    let sent = sent?;
    if sent.rejected > 0 {
        failures.push(format!(
            "{} messages not accepted; first: {}",
            sent.rejected,
            sent.first_error.clone().unwrap_or_default()
        ));
    }

    let db = stack::connect_db(&stack.database_url).await?;
    eprintln!(
        "kurir-bench: waiting until {} messages are sent",
        sent.accepted
    );
    // Counted from the first request, like sent/s: most messages are sent
    // while the load is still going.
    let sending = Progress::start(
        &round.label("sent"),
        round.label_width(),
        sent.accepted,
        load_started,
    );
    let sent_so_far = sending.counter();
    let waited = tokio::select! {
        r = load::wait_sent(&db, sent.accepted, Duration::from_secs(args.timeout), |n| {
            sent_so_far.store(n, Ordering::Relaxed);
        }) => r,
        e = stack.watch() => Err(e),
    };
    sending.finish();
    if let Err(e) = waited {
        failures.push(format!("{e:#}"));
    }
    if args.receipts {
        // CPU counts until every receipt is applied, not only the sends.
        let reading = Progress::start(
            &round.label("read"),
            round.label_width(),
            sent.accepted,
            load_started,
        );
        let read_so_far = reading.counter();
        let read = tokio::select! {
            r = load::wait_read(&db, sent.accepted, Duration::from_secs(args.timeout), |n| {
                read_so_far.store(n, Ordering::Relaxed);
            }) => r,
            e = stack.watch() => Err(e),
        };
        reading.finish();
        match read {
            Ok(()) => eprintln!(
                "kurir-bench: every message read {:.1} s after the first request",
                load_started.elapsed().as_secs_f64()
            ),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let groups = stop_sampling(sampling, &groups).await?;
    if let Err(e) = stack.check_alive() {
        failures.push(format!("{e:#}"));
    }

    let settled = load::settled(&db, "messages").await?;
    let mut latencies = sent.latencies;
    let (a50, a99) = stats::p50_p99(&mut latencies);
    let mut kurir = RunFigures {
        name: "kurir".into(),
        messages: m as u64,
        accepted: sent.accepted,
        rejected: sent.rejected,
        sent: settled.sent,
        accept_seconds: sent.span.as_secs_f64(),
        accepted_per_s: stats::rate(sent.accepted, sent.span.as_secs_f64()),
        end_to_end_seconds: settled.span,
        sent_per_s: settled.span.and_then(|s| stats::rate(settled.sent, s)),
        accept_p50_ms: ms(a50),
        accept_p99_ms: ms(a99),
        accept_to_sent_p50_ms: ms(settled.p50),
        accept_to_sent_p99_ms: ms(settled.p99),
        late: sent.late,
        processes: figures(&groups, settled.sent, ticks_per_s, "bench"),
        ..RunFigures::default()
    };
    kurir.set_total();
    let mut runs = vec![kurir];

    if settings.reference && failures.is_empty() {
        if !args.keep {
            eprintln!("kurir-bench: stopping kurir before the reference");
            stack.stop_children().await;
        }
        eprintln!(
            "kurir-bench: reference pipeline, {m} messages, {} producers and consumers",
            settings.concurrency
        );
        let mut groups = server_groups();
        groups.push(Group::new("bench", Select::Pids(vec![std::process::id()])));
        let groups = Arc::new(Mutex::new(groups));
        let sampling = sampler(groups.clone());
        let consuming = Progress::start(
            &round.label("reference consumed"),
            round.label_width(),
            m as u64,
            Instant::now(),
        );
        let outcome = reference::run(
            &stack.database_url,
            &stack.amqp_url,
            &stack.prefix,
            m,
            settings.concurrency,
            consuming.counter(),
        )
        .await;
        consuming.finish();
        let groups = stop_sampling(sampling, &groups).await?;
        match outcome {
            Ok(mut o) => {
                let settled = load::settled(&db, reference::TABLE).await?;
                let (p50, p99) = stats::p50_p99(&mut o.latencies);
                let total = o.total_span.as_secs_f64();
                let mut r = RunFigures {
                    name: "reference".into(),
                    messages: m as u64,
                    accepted: o.latencies.len() as u64,
                    sent: o.consumed,
                    accept_seconds: o.produce_span.as_secs_f64(),
                    accepted_per_s: stats::rate(
                        o.latencies.len() as u64,
                        o.produce_span.as_secs_f64(),
                    ),
                    end_to_end_seconds: Some(total),
                    sent_per_s: stats::rate(o.consumed, total),
                    accept_p50_ms: ms(p50),
                    accept_p99_ms: ms(p99),
                    accept_to_sent_p50_ms: ms(settled.p50),
                    accept_to_sent_p99_ms: ms(settled.p99),
                    processes: figures(&groups, o.consumed, ticks_per_s, ""),
                    ..RunFigures::default()
                };
                r.set_total();
                if let (Some(k), Some(b)) = (runs[0].sent_per_s, r.sent_per_s) {
                    runs[0].ratio_to_reference = Some(k / b);
                }
                runs.push(r);
            }
            Err(e) => failures.push(format!("reference: {e:#}")),
        }
    } else if settings.reference {
        eprintln!("kurir-bench: kurir's run failed, the reference is skipped");
    }

    Ok(Round {
        round: round.n,
        database: stack.database.clone(),
        queue_prefix: stack.prefix.clone(),
        logs: stack.logs.display().to_string(),
        failures,
        runs,
    })
}
