//! `kurir`: the one binary operators run. Parses settings (flags or
//! environment), sets up logging and signals, and calls into the crates that
//! do the work. Nothing else lives here.

mod dlq;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use kurir_core::{
    apikey::ApiKey,
    config::{ApiArgs, BusArgs, DatabaseArgs, PipelineArgs, ProviderArgs, RetryArgs, WorkerArgs},
};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

#[derive(Debug, Parser)]
#[command(
    name = "kurir",
    version,
    about = "WhatsApp messaging at volume: HTTP API, RabbitMQ, workers, Postgres"
)]
struct Cli {
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
    Api(ApiCommand),
    /// Consume and deliver; scale by running more of them.
    Worker(WorkerCommand),
    /// Migrate, then run the API and a worker in one process (for trying it out).
    Dev {
        #[command(flatten)]
        api: ApiCommand,
        #[command(flatten)]
        worker: WorkerOnly,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Show and re-drive dead-lettered envelopes (`{prefix}.dead`).
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        bus: BusArgs,
    },
}

#[derive(Debug, Clone, Args)]
struct ApiCommand {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    bus: BusArgs,
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    api: ApiArgs,
}

/// The worker's own settings (the shared ones come with the API's in `dev`).
#[derive(Debug, Clone, Args)]
struct WorkerOnly {
    #[command(flatten)]
    worker: WorkerArgs,
    #[command(flatten)]
    provider: ProviderArgs,
    #[command(flatten)]
    retry: RetryArgs,
}

#[derive(Debug, Clone, Args)]
struct WorkerCommand {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    bus: BusArgs,
    #[command(flatten)]
    pipeline: PipelineArgs,
    #[command(flatten)]
    own: WorkerOnly,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create the account if needed and a key for it; prints the key alone on stdout.
    Create {
        /// The account's name.
        #[arg(long)]
        account: String,
        /// Use this key instead of a random one (kurir_<id>_<secret>), e.g. a
        /// fixed demo key. Creating the same key again is a no-op.
        #[arg(long, env = "KURIR_NEW_KEY", hide_env_values = true)]
        key: Option<String>,
    },
    /// Revoke a key by its id (the part after `kurir_`, as `keys list` shows).
    Revoke { key_id: String },
    /// List keys: id, account, created, revoked.
    List,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,lapin=off,tower_http=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
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

/// clap names the flag of a bad value; settings mostly come from the
/// environment, so name its variable too.
fn explain(err: clap::Error) -> clap::Error {
    use clap::{CommandFactory, error::ContextKind, error::ContextValue};
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        return err;
    };
    let long = arg
        .trim_start_matches("--")
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned();
    let command = Cli::command();
    let env = std::iter::once(&command)
        .chain(command.get_subcommands())
        .flat_map(|c| {
            c.get_arguments()
                .chain(c.get_subcommands().flat_map(|s| s.get_arguments()))
        })
        .find(|a| a.get_long() == Some(long.as_str()))
        .and_then(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()));
    match env {
        Some(env) if std::env::var_os(&env).is_some() => {
            let mut command = Cli::command();
            let message = err.to_string();
            let first = message
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            command.error(err.kind(), format!("{first} (set by {env})"))
        }
        _ => err,
    }
}

fn main() -> ExitCode {
    let cli = Cli::try_parse().unwrap_or_else(|err| explain(err).exit());
    init_logging(&cli.log_format);
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
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(message)) => {
            error!("{message}");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Bad settings exit 2, failures at run time 1.
enum Failure {
    Config(String),
    Runtime(String),
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Migrate { database } => migrate(&database).await,
        Command::Api(api) => {
            let shutdown = shutdown_on_signals();
            kurir_api::run(api_config(api), shutdown)
                .await
                .map_err(Failure::Runtime)
        }
        Command::Worker(command) => {
            let shutdown = shutdown_on_signals();
            let config = worker_config(command);
            let worker = start_worker(config, &shutdown)?;
            worker.wait().await;
            Ok(())
        }
        Command::Dev { api, worker } => {
            migrate(&api.database).await?;
            let shutdown = shutdown_on_signals();
            let worker_config = worker_config(WorkerCommand {
                database: api.database.clone(),
                bus: api.bus.clone(),
                pipeline: api.pipeline.clone(),
                own: worker,
            });
            let worker = start_worker(worker_config, &shutdown)?;
            let served = kurir_api::run(api_config(api), shutdown.clone()).await;
            shutdown.cancel();
            worker.wait().await;
            served.map_err(Failure::Runtime)
        }
        Command::Keys { command, database } => keys(command, &database).await,
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

fn api_config(command: ApiCommand) -> kurir_api::Config {
    kurir_api::Config {
        database: command.database,
        bus: command.bus,
        pipeline: command.pipeline,
        api: command.api,
    }
}

fn worker_config(command: WorkerCommand) -> kurir_worker::Config {
    kurir_worker::Config {
        database: command.database,
        bus: command.bus,
        pipeline: command.pipeline,
        worker: command.own.worker,
        provider: command.own.provider,
        retry: command.own.retry,
    }
}

/// Starts a worker and its health endpoints.
fn start_worker(
    config: kurir_worker::Config,
    shutdown: &CancellationToken,
) -> Result<kurir_worker::Worker, Failure> {
    let addr = config.worker.worker_metrics_addr;
    let db_timeout = config.database.db_timeout;
    let worker = kurir_worker::Worker::start(config, shutdown.clone())
        .map_err(|err| Failure::Config(err.0))?;
    let probe = kurir_api::ops::Probe {
        pool: worker.pool().clone(),
        publisher: worker.publisher().clone(),
        timeout: db_timeout,
        broker_required: true,
        consuming: Some(worker.consuming()),
    };
    let shutdown = shutdown.clone();
    worker.tasks().spawn(async move {
        if let Err(err) = kurir_api::ops::serve(addr, probe, shutdown).await {
            error!(%addr, error = %err, "cannot serve the worker's health endpoints (KURIR_WORKER_METRICS_ADDR)");
        }
    });
    Ok(worker)
}

async fn migrate(database: &DatabaseArgs) -> Result<(), Failure> {
    let config = kurir_store::pg_config(database).map_err(Failure::Config)?;
    match kurir_store::migrate::run(&config).await {
        Ok(applied) => {
            info!(applied, "database is up to date");
            Ok(())
        }
        Err(err) => Err(Failure::Runtime(format!("migration failed: {err}"))),
    }
}

async fn keys(command: KeysCommand, database: &DatabaseArgs) -> Result<(), Failure> {
    let pool = kurir_store::pool(database).map_err(Failure::Config)?;
    let client = kurir_store::timed(database.db_timeout, async { Ok(pool.get().await?) })
        .await
        .map_err(|err| Failure::Runtime(format!("cannot reach Postgres: {err}")))?;
    let failed = |err: kurir_store::StoreError| Failure::Runtime(err.to_string());
    match command {
        KeysCommand::Create { account, key } => {
            let account_name = account.trim();
            if account_name.is_empty() || account_name.len() > 200 {
                return Err(Failure::Config(
                    "--account must be 1 to 200 characters".into(),
                ));
            }
            let key = match key {
                Some(raw) => ApiKey::parse(&raw)
                    .map_err(|err| Failure::Config(format!("--key {}", err.message)))?,
                None => ApiKey::generate(),
            };
            let account = kurir_store::keys::ensure_account(&client, account_name)
                .await
                .map_err(failed)?;
            let created =
                kurir_store::keys::insert_key(&client, account, key.key_id(), &key.hash())
                    .await
                    .map_err(|err| match err {
                        kurir_store::StoreError::Conflict { .. } => Failure::Runtime(format!(
                            "a different key with id {} exists already",
                            key.key_id()
                        )),
                        other => failed(other),
                    })?;
            info!(
                key_id = key.key_id(),
                account = account_name,
                created,
                "api key ready"
            );
            #[allow(clippy::print_stdout)]
            {
                println!("{}", key.expose());
            }
            Ok(())
        }
        KeysCommand::Revoke { key_id } => {
            if kurir_store::keys::revoke_key(&client, &key_id)
                .await
                .map_err(failed)?
            {
                info!(%key_id, "key revoked");
                Ok(())
            } else {
                Err(Failure::Runtime(format!("no live key with id {key_id}")))
            }
        }
        KeysCommand::List => {
            let keys = kurir_store::keys::list_keys(&client)
                .await
                .map_err(failed)?;
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "{:<34} {:<24} {:<26} REVOKED",
                    "KEY_ID", "ACCOUNT", "CREATED"
                );
                for key in keys {
                    let revoked = key
                        .revoked_at
                        .map(|at| at.to_rfc3339())
                        .unwrap_or_else(|| "-".into());
                    println!(
                        "{:<34} {:<24} {:<26} {revoked}",
                        key.key_id,
                        key.account,
                        key.created_at.to_rfc3339()
                    );
                }
            }
            Ok(())
        }
    }
}
