//! `kurir`: the one binary operators run. Parses settings (flags or
//! environment), sets up logging and signals, and calls into the crates that
//! do the work. Nothing else lives here.

mod accounts;
mod checks;
mod dlq;
mod import;
mod keys;
mod otel;
mod stats;

use std::{io::IsTerminal, process::ExitCode};

use clap::{Args, CommandFactory, Parser, Subcommand};
use kurir_api::config::IntakeArgs;
use kurir_core::config::{BusArgs, DatabaseArgs};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Debug, Parser)]
#[command(
    name = "kurir",
    version,
    about = "WhatsApp messaging at volume: HTTP API, RabbitMQ, workers, Postgres"
)]
pub(crate) struct Cli {
    /// Log format: text or json.
    #[arg(long, env = "KURIR_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    log_format: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database if missing and apply migrations (safe to run concurrently).
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Serve the HTTP API.
    Api(kurir_api::Config),
    /// Consume and deliver; scale by running more of them.
    Worker(kurir_worker::Config),
    /// Migrate, then run the API and a worker in one process (for trying it out).
    Dev {
        #[command(flatten)]
        api: kurir_api::Config,
        #[command(flatten)]
        worker: kurir_worker::config::OwnArgs,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Accounts and their intake limits.
    Accounts {
        #[command(subcommand)]
        command: accounts::AccountsCommand,
        #[command(flatten)]
        database: DatabaseArgs,
        /// The default limit, as the API has it (for `list`).
        #[command(flatten)]
        intake: IntakeArgs,
    },
    /// Users in bulk: `kurir users import --account NAME FILE.csv`.
    Users {
        #[command(subcommand)]
        command: import::UsersCommand,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Messages and status updates by state, retries waiting, the oldest
    /// queued message, and the queues' depths. Exit 1 if Postgres or
    /// RabbitMQ cannot be reached (what could be read is printed).
    Stats {
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Count only this account's messages and status updates (the
        /// queues are shared by every account).
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        bus: BusArgs,
    },
    /// Show and re-drive dead-lettered envelopes (`{prefix}.dead-letters`).
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        bus: BusArgs,
    },
}

/// The command line: [`Cli`]'s, with the shared settings (Postgres,
/// RabbitMQ, the queue prefix) taken before the command's name as well as
/// after it (`kurir --database-url … keys list`). clap's `global` only passes
/// a setting down to a command's own subcommands, so each is defined again
/// on `kurir` itself: hidden there (every command that reads one lists it in
/// its own `--help`), and its value passes down to the command.
pub(crate) fn command() -> clap::Command {
    let shared = BusArgs::augment_args(DatabaseArgs::augment_args(clap::Command::new("shared")));
    let before = shared
        .get_arguments()
        .map(|arg| arg.clone().global(true).hide(true))
        .collect::<Vec<_>>();
    Cli::command().args(before)
}

/// Logs to stderr (text, or JSON for a log collector), filtered by
/// `RUST_LOG`; with `OTEL_EXPORTER_OTLP_ENDPOINT`, spans are exported too,
/// as `service` (then the returned exporter is to be flushed at exit).
fn init_logging(format: &str, service: Option<&'static str>) -> Option<otel::Export> {
    use tracing_subscriber::{Layer, layer::SubscriberExt, util::SubscriberInitExt};
    // lapin and deadpool speak for themselves at every retry; kurir says
    // what happened once, with the reason. RUST_LOG overrides this.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,lapin=off,deadpool=error,tokio_postgres=warn,refinery_core=warn,tower_http=warn",
        )
    });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal, none for a log collector.
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = if format == "json" {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    };
    let registry = tracing_subscriber::registry().with(fmt);
    match service.and_then(otel::layer) {
        Some((layer, export)) => {
            // Spans are exported whatever the log level, kurir's own only
            // (not the exporter's HTTP calls).
            registry.with(layer.with_filter(otel::spans())).init();
            Some(export)
        }
        None => {
            registry.init();
            None
        }
    }
}

/// One token, fired on SIGINT or SIGTERM; a second signal exits at once.
/// The listener is the one task no `Tasks` owns: it must outlive them all,
/// so that a second signal still works while they drain.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let fired = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutting down (a second signal exits at once)");
        fired.cancel();
        wait_for_signal().await;
        warn!("second signal: exiting now");
        std::process::exit(130);
    });
    token
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn main() -> ExitCode {
    let cli = checks::parse();
    let service = match &cli.command {
        Command::Api(_) => Some("kurir-api"),
        Command::Worker(_) => Some("kurir-worker"),
        Command::Dev { .. } => Some("kurir-dev"),
        _ => None,
    };
    let export = init_logging(&cli.log_format, service);
    let json_logs = cli.log_format == "json";
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    tracing::debug!("stopped");
    // Don't wait on stray blocking tasks (a DNS lookup, a driver thread).
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    if let Some(export) = export {
        export.finish();
    }
    let (code, message) = match result {
        Ok(()) => return ExitCode::SUCCESS,
        Err(Failure::Config(message)) => (2, message),
        Err(Failure::Runtime(message)) => (1, message),
    };
    // One line: a log line for a log collector, a plain one for a person.
    if json_logs {
        error!(exit_code = code, "{message}");
    } else {
        eprintln!("error: {message}");
    }
    ExitCode::from(code)
}

/// Configuration mistakes (a setting, a missing database, an address in use)
/// exit 2; failures at run time exit 1.
pub(crate) enum Failure {
    Config(String),
    Runtime(String),
}

impl From<kurir_store::SetupError> for Failure {
    fn from(err: kurir_store::SetupError) -> Self {
        if err.is_setting() {
            Failure::Config(err.to_string())
        } else {
            Failure::Runtime(err.to_string())
        }
    }
}

/// Rows aligned under their headers, like `docker ps`.
pub(crate) fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> Vec<String> {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header = header.map(str::to_owned);
    std::iter::once(&header)
        .chain(rows)
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            cells.join("   ").trim_end().to_owned()
        })
        .collect()
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Migrate { database } => migrate(&database).await,
        Command::Api(api) => {
            checks::database(&api.database).await?;
            let shutdown = shutdown_on_signals();
            serve_api(api, shutdown).await
        }
        Command::Worker(config) => {
            let checked = config.check().map_err(worker_failure)?;
            checks::database(&checked.config().database).await?;
            let shutdown = shutdown_on_signals();
            let worker = kurir_worker::Worker::serve(checked, shutdown)
                .await
                .map_err(worker_failure)?;
            worker.wait().await;
            Ok(())
        }
        Command::Dev { api, worker } => {
            // The shared settings are the API's; the worker adds its own.
            let checked = worker
                .with(api.database.clone(), api.bus.clone(), api.shutdown.clone())
                .check()
                .map_err(worker_failure)?;
            migrate(&api.database).await?;
            let shutdown = shutdown_on_signals();
            let worker = kurir_worker::Worker::serve(checked, shutdown.clone())
                .await
                .map_err(worker_failure)?;
            let served = serve_api(api, shutdown.clone()).await;
            shutdown.cancel();
            worker.wait().await;
            served
        }
        Command::Keys { command, database } => keys::run(command, &database).await,
        Command::Accounts {
            command,
            database,
            intake,
        } => accounts::run(command, &database, &intake).await,
        Command::Users { command, database } => import::run(command, &database).await,
        Command::Stats {
            json,
            account,
            database,
            bus,
        } => stats::run(json, account, &database, &bus).await,
        Command::Dlq {
            command,
            database,
            bus,
        } => dlq::run(command, &database, &bus)
            .await
            .map_err(|err| match err {
                dlq::Error::Usage(message) => Failure::Config(message),
                dlq::Error::Failed(message) => Failure::Runtime(message),
            }),
    }
}

async fn serve_api(config: kurir_api::Config, shutdown: CancellationToken) -> Result<(), Failure> {
    kurir_api::run(config, shutdown)
        .await
        .map_err(|err| match err {
            kurir_api::RunError::Config(message) => Failure::Config(message),
            kurir_api::RunError::Failed(message) => Failure::Runtime(message),
        })
}

fn worker_failure(err: kurir_worker::WorkerError) -> Failure {
    match err {
        kurir_worker::WorkerError::Database(err) => Failure::from(err),
        settings => Failure::Config(settings.to_string()),
    }
}

async fn migrate(database: &DatabaseArgs) -> Result<(), Failure> {
    let config = kurir_store::pg_config(database).map_err(Failure::from)?;
    let name = config.get_dbname().unwrap_or("").to_owned();
    let total = kurir_store::migrate::latest_version();
    match kurir_store::migrate::run(&config).await {
        Ok(0) => {
            info!("database \"{name}\" is up to date (schema version {total})");
            Ok(())
        }
        Ok(applied) => {
            info!(
                "database \"{name}\": applied {applied} migrations, now up to date (schema version {total})"
            );
            Ok(())
        }
        Err(err) => Err(Failure::Runtime(format!("migration failed: {err}"))),
    }
}
