//! The dead-letter queue keeps what it holds: reading it (`kurir dlq list`)
//! never ages a letter out, on RabbitMQ 3.x or 4.x; replay re-drives each
//! message exactly once; and the old `{p}.dead` queue, which RabbitMQ 4
//! limited to 20 deliveries, is moved into `{p}.dead-letters` with none lost.
//! CI runs these against both brokers.

use std::collections::HashSet;

use futures_util::StreamExt;
use lapin::{
    BasicProperties,
    options::{
        BasicConsumeOptions, BasicPublishOptions, BasicRejectOptions, ConfirmSelectOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};

use crate::{
    process::run_kurir,
    support::{DEADLINE, Options, TestApp, eventually},
};

/// Rejects (without requeue) the next `count` envelopes in `{p}.deliveries`,
/// so the broker dead-letters them, with its own `x-death` record.
async fn reject_next(app: &TestApp, count: usize) {
    let (connection, channel) = app.broker_channel().await;
    let mut consumer = channel
        .basic_consume(
            app.topology().deliveries().into(),
            "rejecter".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for _ in 0..count {
        let delivery = tokio::time::timeout(DEADLINE, consumer.next())
            .await
            .expect("an envelope arrives")
            .unwrap()
            .unwrap();
        delivery
            .acker
            .reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
    }
    let _ = connection.close(200, "done".into()).await;
}

/// Publishes bytes no worker can read to the dead-letter exchange, as a
/// worker parks an undecodable envelope.
async fn park_undecodable(app: &TestApp, id: &str) {
    let (connection, channel) = app.broker_channel().await;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "x-kurir-reason".into(),
        AMQPValue::LongString("undecodable: not JSON".into()),
    );
    let confirm = channel
        .basic_publish(
            app.topology().dead_letter_exchange().into(),
            "undecodable".into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            b"\x00not an envelope",
            BasicProperties::default()
                .with_message_id(id.into())
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack() && confirm.take_message().is_none());
    let _ = connection.close(200, "done".into()).await;
}

/// `kurir dlq list`: the lines after the header.
async fn list(env: &[(String, String)]) -> Vec<String> {
    let out = run_kurir(&["dlq", "list"], env).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = stdout.lines();
    assert!(
        lines.next().is_some_and(|h| h.starts_with("ID")),
        "{stdout}"
    );
    lines.map(str::to_owned).collect()
}

fn ids(lines: &[String]) -> HashSet<String> {
    lines
        .iter()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

async fn queue_exists(app: &TestApp, queue: &str) -> bool {
    let (connection, channel) = app.broker_channel().await;
    let passive = QueueDeclareOptions {
        passive: true,
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let found = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .is_ok();
    let _ = connection.close(200, "done".into()).await;
    found
}

/// Replays everything with a worker running; each message ends `sent`,
/// delivered exactly once; the undecodable letter stays.
async fn replay_all_once(app: &mut TestApp, sent: &[String], undecodable: &str) {
    let env = app.process_env();
    app.start_worker();
    let out = run_kurir(&["dlq", "replay", "--all"], &env).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    for id in sent {
        assert!(said.contains(&format!("{id}  replayed")), "{said}");
    }
    assert!(said.contains(&format!("{undecodable}  kept")), "{said}");
    for id in sent {
        app.message_with_status(id, "sent").await;
    }
    // Once more: nothing left to re-drive, nothing sent twice.
    let again = run_kurir(&["dlq", "replay", "--all"], &env).await;
    assert!(again.status.success());
    for id in sent {
        assert_eq!(app.sandbox_requests_for(id).len(), 1, "{id} sent once");
    }
    let left = list(&env).await;
    assert_eq!(
        ids(&left),
        HashSet::from([undecodable.to_owned()]),
        "{left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_dead_letters_fifty_times_keeps_every_one_and_replay_sends_each_once() {
    let mut app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Options::default()
    })
    .await;
    app.create_user("u1", "+62123456789").await;
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(app.send("u1", &format!("dead-lettered {n}")).await);
    }
    reject_next(&app, 3).await;
    let undecodable = uuid::Uuid::new_v4().to_string();
    park_undecodable(&app, &undecodable).await;

    let env = app.process_env();
    let mut expected: HashSet<String> = sent.iter().cloned().collect();
    expected.insert(undecodable.clone());
    let all_there = eventually(DEADLINE, || async {
        (ids(&list(&env).await) == expected).then_some(())
    })
    .await;
    assert!(all_there.is_some(), "dlq list never showed all four");

    // RabbitMQ 4 dropped them after the 20th list when the queue had no
    // delivery limit of its own; 50 lists must change nothing.
    for round in 1..=50 {
        let lines = list(&env).await;
        assert_eq!(ids(&lines), expected, "list {round}: {lines:?}");
        assert_eq!(lines.len(), 4, "list {round}: {lines:?}");
    }
    let lines = list(&env).await;
    for id in &sent {
        let line = lines.iter().find(|l| l.contains(id.as_str())).unwrap();
        assert!(
            line.contains("message") && line.contains("rejected"),
            "{line}"
        );
    }

    replay_all_once(&mut app, &sent, &undecodable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_dead_letter_queue_is_moved_into_the_new_one_with_none_lost() {
    let mut app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Options::default()
    })
    .await;
    app.create_user("u1", "+62123456789").await;
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(app.send("u1", &format!("in the old queue {n}")).await);
    }
    let topology = app.topology();
    let legacy = topology.legacy_dead();

    // The dead-letter queue as an earlier kurir declared it: quorum, no
    // delivery limit, bound in place of the new one.
    let (connection, channel) = app.broker_channel().await;
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(legacy.as_str().into(), durable, quorum)
        .await
        .unwrap();
    for route in ["deliver", "undecodable"] {
        channel
            .queue_unbind(
                topology.dead().into(),
                topology.dead_letter_exchange().into(),
                route.into(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        channel
            .queue_bind(
                legacy.as_str().into(),
                topology.dead_letter_exchange().into(),
                route.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
    }
    let _ = connection.close(200, "done".into()).await;

    reject_next(&app, 3).await;
    let undecodable = uuid::Uuid::new_v4().to_string();
    park_undecodable(&app, &undecodable).await;
    let mut expected: HashSet<String> = sent.iter().cloned().collect();
    expected.insert(undecodable.clone());
    let in_old = eventually(DEADLINE, || async {
        let (connection, channel) = app.broker_channel().await;
        let passive = QueueDeclareOptions {
            passive: true,
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(legacy.as_str().into(), passive, FieldTable::default())
            .await
            .unwrap();
        let _ = connection.close(200, "done".into()).await;
        (queue.message_count() == 4).then_some(())
    })
    .await;
    assert!(in_old.is_some(), "the four letters never reached {legacy}");

    // The first `kurir dlq list` of a new kurir moves them, and shows them
    // as the broker recorded them.
    let env = app.process_env();
    let lines = list(&env).await;
    assert_eq!(ids(&lines), expected, "{lines:?}");
    for id in &sent {
        let line = lines.iter().find(|l| l.contains(id.as_str())).unwrap();
        assert!(
            line.contains("message") && line.contains("rejected"),
            "{line}"
        );
    }
    let line = lines.iter().find(|l| l.contains(&undecodable)).unwrap();
    assert!(line.contains("undecodable"), "{line}");
    assert!(!queue_exists(&app, &legacy).await, "{legacy} is deleted");
    for round in 1..=25 {
        assert_eq!(ids(&list(&env).await), expected, "list {round}");
    }

    replay_all_once(&mut app, &sent, &undecodable).await;
}
