//! `kurir stats [--json] [--account NAME]`: where the work is. Messages and
//! status updates by state, retries waiting, the oldest queued message (from
//! Postgres, in one snapshot), and the depths of the deliveries and
//! dead-letter queues (from RabbitMQ, passive declares: nothing is created).
//!
//! RabbitMQ unreachable: the Postgres part is printed all the same, with a
//! line saying so, and the exit code is 1 (the picture is incomplete).
//! Postgres unreachable: nothing to print, exit 1.

use std::time::Duration;

use kurir_bus::{
    Topology,
    stats::{QueueDepth, QueueDepths},
};
use kurir_core::{
    MessageStatus, StatusUpdateState,
    config::{BusArgs, DatabaseArgs},
};
use kurir_store::stats::{StateCounts, Stats};
use serde_json::{Value, json};

use crate::Failure;

/// How long each count may take (whole-table counts on a large table take
/// longer than KURIR_DB_TIMEOUT allows the API's statements).
const COUNT_TIMEOUT: Duration = Duration::from_secs(60);

const STATUS_UPDATE_STATES: [StatusUpdateState; 4] = [
    StatusUpdateState::Queued,
    StatusUpdateState::Sending,
    StatusUpdateState::Success,
    StatusUpdateState::Failed,
];

pub async fn run(
    json: bool,
    account: Option<String>,
    database: &DatabaseArgs,
    bus: &BusArgs,
) -> Result<(), Failure> {
    let db = kurir_store::Db::connect_lazily(database)?;
    let mut client = db
        .client()
        .await
        .map_err(|err| Failure::Runtime(format!("cannot reach Postgres: {err}")))?;
    let account_name = account.as_deref().map(str::trim);
    let account_id = match account_name {
        None => None,
        Some(name) => Some(
            db.timed(kurir_store::import::account_named(&client, name))
                .await
                .map_err(|err| Failure::Runtime(err.to_string()))?
                .ok_or_else(|| {
                    Failure::Config(format!(
                        "no account named {name:?} (kurir accounts list shows them)"
                    ))
                })?,
        ),
    };
    let counted = kurir_store::timed(COUNT_TIMEOUT + Duration::from_secs(5), async {
        let transaction = client.transaction().await?;
        kurir_store::stats::read_snapshot(&transaction, COUNT_TIMEOUT).await?;
        let stats = kurir_store::stats::collect(&transaction, account_id).await?;
        transaction.commit().await?;
        Ok(stats)
    })
    .await
    .map_err(|err| Failure::Runtime(format!("cannot count in Postgres: {err}")))?;

    let topology = Topology::new(bus.queue_prefix.clone());
    let queues = kurir_bus::stats::queue_depths(&bus.amqp_url, &topology)
        .await
        .map_err(|err| err.to_string());

    #[allow(clippy::print_stdout)]
    if json {
        println!("{}", as_json(account_name, &counted, &queues));
    } else {
        for line in as_text(account_name, &counted, &queues) {
            println!("{line}");
        }
    }
    match queues {
        Ok(_) => Ok(()),
        Err(err) => Err(Failure::Runtime(format!(
            "RabbitMQ is unreachable, queue depths unknown: {err}"
        ))),
    }
}

fn message_counts(counts: &StateCounts) -> Vec<(&'static str, i64)> {
    MessageStatus::ALL
        .iter()
        .map(|state| (state.as_str(), counts.get(state.as_str())))
        .collect()
}

fn status_update_counts(counts: &StateCounts) -> Vec<(&'static str, i64)> {
    STATUS_UPDATE_STATES
        .iter()
        .map(|state| (state.as_str(), counts.get(state.as_str())))
        .collect()
}

/// How long the oldest queued message has waited, in whole seconds.
fn oldest_age(stats: &Stats) -> Option<i64> {
    match (stats.oldest_queued_message, stats.now) {
        (Some(oldest), Some(now)) => Some((now - oldest).num_seconds().max(0)),
        _ => None,
    }
}

fn queue_json(queue: &QueueDepth) -> Value {
    match queue.found {
        Some(depth) => json!({
            "queue": queue.name,
            "exists": true,
            "ready": depth.ready,
            "consumers": depth.consumers,
        }),
        None => json!({ "queue": queue.name, "exists": false }),
    }
}

fn as_json(account: Option<&str>, stats: &Stats, queues: &Result<QueueDepths, String>) -> Value {
    let object = |counts: Vec<(&str, i64)>| -> Value {
        counts
            .into_iter()
            .map(|(state, count)| (state.to_owned(), Value::from(count)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let rabbitmq = match queues {
        Ok(queues) => json!({
            "reachable": true,
            "deliveries": queue_json(&queues.deliveries),
            "dead": queue_json(&queues.dead),
        }),
        Err(err) => json!({ "reachable": false, "error": err }),
    };
    json!({
        "account": account,
        "messages": object(message_counts(&stats.messages)),
        "status_updates": object(status_update_counts(&stats.status_updates)),
        "retries_waiting": {
            "messages": stats.messages.retries_waiting,
            "status_updates": stats.status_updates.retries_waiting,
        },
        "oldest_queued_message": {
            "created_at": stats.oldest_queued_message,
            "age_seconds": oldest_age(stats),
        },
        "rabbitmq": rabbitmq,
    })
}

fn queue_text(queue: &QueueDepth) -> String {
    match queue.found {
        Some(depth) => format!(
            "{} ready, {} consumer{} ({})",
            depth.ready,
            depth.consumers,
            if depth.consumers == 1 { "" } else { "s" },
            queue.name
        ),
        None => format!(
            "no such queue ({}; no kurir process declared it yet)",
            queue.name
        ),
    }
}

fn as_text(
    account: Option<&str>,
    stats: &Stats,
    queues: &Result<QueueDepths, String>,
) -> Vec<String> {
    let mut lines = vec![match account {
        Some(name) => format!("account {name}"),
        None => "all accounts".to_owned(),
    }];
    lines.push(String::new());
    let messages = message_counts(&stats.messages);
    let updates = status_update_counts(&stats.status_updates);
    let rows: Vec<[String; 4]> = (0..messages.len().max(updates.len()))
        .map(|i| {
            let cell = |counts: &[(&str, i64)], at: usize| match counts.get(at) {
                Some((state, count)) => (state.to_string(), count.to_string()),
                None => (String::new(), String::new()),
            };
            let (message_state, message_count) = cell(&messages, i);
            let (update_state, update_count) = cell(&updates, i);
            [message_state, message_count, update_state, update_count]
        })
        .collect();
    lines.extend(crate::table(
        ["MESSAGES", "COUNT", "STATUS UPDATES", "COUNT"],
        &rows,
    ));
    lines.push(String::new());
    let facts = [
        [
            "retries waiting".to_owned(),
            format!(
                "{} messages, {} status updates",
                stats.messages.retries_waiting, stats.status_updates.retries_waiting
            ),
        ],
        [
            "oldest queued message".to_owned(),
            match (oldest_age(stats), stats.oldest_queued_message) {
                (Some(age), Some(at)) => format!(
                    "{} old (accepted {})",
                    humantime::format_duration(Duration::from_secs(age.unsigned_abs())),
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                _ => "none queued".to_owned(),
            },
        ],
        [
            "deliveries queue".to_owned(),
            match queues {
                Ok(queues) => queue_text(&queues.deliveries),
                Err(_) => "unknown: RabbitMQ is unreachable".to_owned(),
            },
        ],
        [
            "dead-letter queue".to_owned(),
            match queues {
                Ok(queues) => queue_text(&queues.dead),
                Err(_) => "unknown: RabbitMQ is unreachable".to_owned(),
            },
        ],
    ];
    for [name, value] in facts {
        lines.push(format!("{name:<22} {value}"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use kurir_bus::stats::{Depth, QueueDepth};

    use super::queue_text;

    fn queue(consumers: u32) -> QueueDepth {
        QueueDepth {
            name: "kurir.deliveries".into(),
            found: Some(Depth {
                ready: 3,
                consumers,
            }),
        }
    }

    #[test]
    fn one_consumer_is_singular_and_the_rest_plural() {
        assert_eq!(
            queue_text(&queue(1)),
            "3 ready, 1 consumer (kurir.deliveries)"
        );
        assert_eq!(
            queue_text(&queue(0)),
            "3 ready, 0 consumers (kurir.deliveries)"
        );
        assert_eq!(
            queue_text(&queue(4)),
            "3 ready, 4 consumers (kurir.deliveries)"
        );
    }
}
