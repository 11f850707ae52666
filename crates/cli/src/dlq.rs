//! `kurir dlq list|replay`: what sits in `{prefix}.dead-letters`, and putting it
//! back on the normal path. Replaying goes through the envelope's row in
//! Postgres (marked unpublished, so the relay publishes it again), never by
//! copying the envelope back to the broker: a row that is already delivered
//! is not sent again, and replaying twice sends nothing twice.

use clap::{Args, Subcommand};
use kurir_bus::{
    Topology,
    dlq::{DeadLetter, DeadLetters},
};
use kurir_core::config::{BusArgs, DatabaseArgs};
use kurir_store::pipeline::{self, Replayed};

/// Most dead letters one command looks at.
const MOST: usize = 100_000;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters: id, kind, reason, deaths, first death.
    List,
    /// Re-drive dead letters by id (or all of them) and remove them from the queue.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Replay every dead letter.
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    /// Ids as `kurir dlq list` shows them.
    ids: Vec<String>,
}

pub enum Error {
    /// The command was given wrong arguments (exit 2).
    Usage(String),
    /// Something failed at run time (exit 1).
    Failed(String),
}

pub async fn run(command: DlqCommand, database: &DatabaseArgs, bus: &BusArgs) -> Result<(), Error> {
    if let DlqCommand::Replay(args) = &command
        && !args.all
        && args.ids.is_empty()
    {
        return Err(Error::Usage(
            "kurir dlq replay needs --all or the ids to replay (see kurir dlq list)".into(),
        ));
    }
    let topology = Topology::new(bus.queue_prefix.clone());
    let letters = DeadLetters::open(&bus.amqp_url, &topology)
        .await
        .map_err(|err| Error::Failed(format!("cannot read {}: {err}", topology.dead())))?;
    let found = match letters.fetch(MOST).await {
        Ok(found) => found,
        Err(err) => {
            letters.close(&[]).await;
            return Err(Error::Failed(format!(
                "cannot read the dead letters: {err}"
            )));
        }
    };
    let result = match command {
        DlqCommand::List => {
            list(&found);
            Ok(())
        }
        DlqCommand::Replay(args) => replay(&letters, &found, database, args).await,
    };
    // Whatever was not removed goes back to the queue, in order.
    letters.close(&found).await;
    result
}

fn kind_of(letter: &DeadLetter) -> String {
    match &letter.envelope {
        Ok(envelope) => envelope.kind.to_string(),
        Err(_) => "undecodable".into(),
    }
}

fn when(seconds: Option<i64>) -> String {
    seconds
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map(|at| at.to_rfc3339())
        .unwrap_or_else(|| "-".into())
}

#[allow(clippy::print_stdout)]
fn list(found: &[DeadLetter]) {
    let rows: Vec<[String; 5]> = found
        .iter()
        .map(|letter| {
            [
                letter.id.clone(),
                kind_of(letter),
                letter.reason.clone(),
                letter.deaths.to_string(),
                when(letter.first_death),
            ]
        })
        .collect();
    for line in crate::table(["ID", "KIND", "REASON", "DEATHS", "FIRST_DEATH"], &rows) {
        println!("{line}");
    }
    tracing::info!(count = rows.len(), "dead letters listed");
}

#[allow(clippy::print_stdout)]
async fn replay(
    letters: &DeadLetters,
    found: &[DeadLetter],
    database: &DatabaseArgs,
    args: ReplayArgs,
) -> Result<(), Error> {
    let db = kurir_store::Db::connect_lazily(database).map_err(|err| {
        if err.is_setting() {
            Error::Usage(err.to_string())
        } else {
            Error::Failed(err.to_string())
        }
    })?;
    let client = db
        .client()
        .await
        .map_err(|err| Error::Failed(format!("cannot reach Postgres: {err}")))?;
    let mut unknown: Vec<&String> = args
        .ids
        .iter()
        .filter(|id| !found.iter().any(|letter| &letter.id == *id))
        .collect();
    unknown.dedup();
    let mut replayed = 0;
    let mut kept = 0;
    for letter in found
        .iter()
        .filter(|letter| args.all || args.ids.contains(&letter.id))
    {
        let envelope = match &letter.envelope {
            Ok(envelope) => envelope,
            Err(err) => {
                println!("{}  kept: cannot be replayed ({err})", letter.id);
                kept += 1;
                continue;
            }
        };
        let outcome = pipeline::replay(&client, envelope.kind, envelope.id)
            .await
            .map_err(|err| Error::Failed(format!("cannot replay {}: {err}", letter.id)))?;
        let said = match outcome {
            Replayed::Queued => "replayed: the relay publishes it again",
            Replayed::InDelivery => "removed: a worker is delivering it now",
            Replayed::Final => "removed: it is already sent or failed; nothing to send",
            Replayed::Missing => "removed: no such row in this database",
        };
        letters
            .remove(letter)
            .await
            .map_err(|err| Error::Failed(format!("cannot remove {}: {err}", letter.id)))?;
        println!("{}  {said}", letter.id);
        replayed += 1;
    }
    tracing::info!(replayed, kept, "dlq replay done");
    if !unknown.is_empty() {
        let ids: Vec<&str> = unknown.iter().map(|id| id.as_str()).collect();
        return Err(Error::Failed(format!(
            "no dead letter with id {}",
            ids.join(", ")
        )));
    }
    Ok(())
}
