//! `kurir stats`: the counts match what was sent, and the queues' depths
//! what the broker holds.

use std::time::Duration;

use kurir_store::stats;
use serde_json::Value;

use crate::{
    process::run_kurir,
    support::{DEADLINE, Options, TestApp, eventually},
};

async fn counted(app: &TestApp, account: Option<&str>) -> stats::Stats {
    let mut client = app.pool.get().await.unwrap();
    let account = match account {
        Some(name) => Some(
            kurir_store::import::account_named(&client, name)
                .await
                .unwrap()
                .unwrap(),
        ),
        None => None,
    };
    let transaction = client.transaction().await.unwrap();
    stats::read_snapshot(&transaction, Duration::from_secs(10))
        .await
        .unwrap();
    stats::collect(&transaction, account).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_what_was_sent_by_state_and_the_queued_envelopes() {
    let mut app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Options::default()
    })
    .await;
    app.create_user("u-1", "+6281200000001").await;
    let ids = app.send_many("u-1", 3).await;
    app.set_status("u-1", "Sedang rapat").await;
    // A retry waiting for its time: queued, tried once before.
    let client = app.pool.get().await.unwrap();
    let retry: uuid::Uuid = ids[0].parse().unwrap();
    client
        .execute("UPDATE messages SET attempts = 1 WHERE id = $1", &[&retry])
        .await
        .unwrap();

    let now = counted(&app, None).await;
    assert_eq!(now.messages.get("queued"), 3);
    assert_eq!(now.messages.retries_waiting, 1);
    assert_eq!(now.status_updates.get("queued"), 1);
    assert!(now.oldest_queued_message.is_some());
    let own = counted(&app, Some("test-a")).await;
    assert_eq!(
        (own.messages, own.status_updates, own.oldest_queued_message),
        (now.messages, now.status_updates, now.oldest_queued_message)
    );

    // Another account sees none of it.
    app.key_for("other").await;
    let other = counted(&app, Some("other")).await;
    assert_eq!(other.messages.by_state.values().sum::<i64>(), 0);
    assert_eq!(other.oldest_queued_message, None);

    // No worker reads the deliveries queue: the four envelopes wait there.
    let topology = app.topology();
    let depths = eventually(DEADLINE, || async {
        let depths = kurir_bus::stats::queue_depths(&app.bus_args.amqp_url, &topology)
            .await
            .unwrap();
        (depths.deliveries.found.map(|d| d.ready) == Some(4)).then_some(depths)
    })
    .await
    .expect("four envelopes ready in the deliveries queue");
    assert_eq!(depths.deliveries.found.unwrap().consumers, 0);
    assert_eq!(depths.dead.found.map(|d| d.ready), Some(0));

    // Delivered: everything is sent and nothing waits.
    client
        .execute("UPDATE messages SET attempts = 0 WHERE id = $1", &[&retry])
        .await
        .unwrap();
    app.start_worker();
    app.all_sent(3, DEADLINE).await;
    let done = eventually(DEADLINE, || async {
        let done = counted(&app, None).await;
        (done.status_updates.get("success") == 1).then_some(done)
    })
    .await
    .expect("the status update succeeds");
    assert_eq!(done.messages.get("sent"), 3);
    assert_eq!(done.messages.get("queued"), 0);
    assert_eq!(done.oldest_queued_message, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stats_command_prints_one_json_object_and_says_when_rabbitmq_is_unreachable() {
    let app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Options::default()
    })
    .await;
    app.create_user("u-1", "+6281200000001").await;
    app.send_many("u-1", 2).await;
    let env = |amqp: &str| {
        vec![
            (
                "DATABASE_URL".to_owned(),
                app.database_args.database_url.clone(),
            ),
            ("AMQP_URL".to_owned(), amqp.to_owned()),
            (
                "KURIR_QUEUE_PREFIX".to_owned(),
                app.bus_args.queue_prefix.clone(),
            ),
        ]
    };
    let out = run_kurir(&["stats", "--json"], &env(&app.bus_args.amqp_url)).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["messages"]["queued"], 2, "{json}");
    assert_eq!(json["messages"]["sent"], 0, "{json}");
    assert_eq!(json["status_updates"]["success"], 0, "{json}");
    assert_eq!(json["retries_waiting"]["messages"], 0, "{json}");
    assert!(
        json["oldest_queued_message"]["age_seconds"].is_i64(),
        "{json}"
    );
    assert_eq!(json["rabbitmq"]["reachable"], true, "{json}");
    let deliveries = format!("{}.deliveries", app.bus_args.queue_prefix);
    assert_eq!(json["rabbitmq"]["deliveries"]["queue"], deliveries.as_str());

    let table = run_kurir(
        &["stats", "--account", "test-a"],
        &env(&app.bus_args.amqp_url),
    )
    .await;
    assert_eq!(table.status.code(), Some(0));
    let text = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(text.contains("MESSAGES"), "{text}");
    assert!(text.contains("oldest queued message"), "{text}");

    // RabbitMQ down: the Postgres part all the same, and exit 1.
    let out = run_kurir(&["stats"], &env("amqp://guest:guest@127.0.0.1:1/%2f")).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.contains("queued"), "{stdout}");
    assert!(stdout.contains("RabbitMQ is unreachable"), "{stdout}");
    assert!(stderr.contains("RabbitMQ is unreachable"), "{stderr}");
}
