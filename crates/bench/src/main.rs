//! kurir-bench: starts a kurir stack of its own (fresh database, queue
//! prefix, sandbox, api, workers), drives single-message POSTs through it,
//! waits until Postgres says every message is `sent`, and reports rates,
//! latencies, CPU per message and peak RSS by process; with `--reference`
//! also a bare pipeline (`reference`) on the same Postgres and RabbitMQ, and
//! kurir's ratio to it. `--rounds N` repeats that N times, alternately,
//! and reports the median.

mod args;
mod load;
mod procfs;
mod progress;
mod reference;
mod report;
mod sampling;
mod stack;
mod stats;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use clap::Parser;

use args::{Args, Settings};
use sampling::{figures, sampler, server_groups, stop_sampling};

use procfs::{Group, Select};
use progress::{Numbered, Progress};
use report::{Header, Report, Round, RunFigures};
use stack::Stack;

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
