//! Real restarts of a private RabbitMQ node and a private Postgres under
//! load: nothing accepted is lost, nothing is left stuck, and every kurir
//! process recovers by itself. Each test prints what it measured (sent,
//! lost, stuck, duplicated, time to recover) for the record.
//!
//! They boot servers of their own (see `nodes`), which needs the
//! `rabbitmq-server` and PostgreSQL 15 server packages and root, as CI has:
//! so they are `#[ignore]`d by default and CI runs them with
//! `cargo test --workspace -- --include-ignored`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    nodes::{PrivateBroker, PrivatePostgres},
    support::{Options, TestApp, eventually},
};

/// How long each fault lasts.
const OUTAGE: Duration = Duration::from_secs(3);

/// Provider calls per message id, and how many calls were duplicates.
fn calls_by_id(app: &TestApp) -> (HashMap<String, usize>, usize) {
    let mut calls: HashMap<String, usize> = HashMap::new();
    for request in app.sandbox.requests() {
        let id = request
            .biz_opaque_callback_data
            .expect("every provider call carries its message id");
        *calls.entry(id).or_default() += 1;
    }
    let duplicates = calls.values().map(|n| n - 1).sum();
    (calls, duplicates)
}

/// `rabbitmqctl list_queues` of one queue: (ready, unacknowledged). The
/// broker's own `rabbitmqctl`: the private node may run from a root file
/// system (RabbitMQ 4 in scripts/debian13-servers's chroot) with its epmd.
async fn queue_counts(broker: &PrivateBroker, queue: &str) -> Option<(u64, u64)> {
    let out = tokio::process::Command::from(broker.rabbitmqctl())
        .args([
            "-q",
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ])
        .output()
        .await
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next()? == queue).then_some(())?;
            Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs rabbitmq-server, PostgreSQL 15 and root: cargo test -- --include-ignored"]
async fn a_broker_restart_mid_stream_strands_nothing_and_delivery_resumes_by_itself() {
    const MESSAGES: usize = 1000;
    let broker = PrivateBroker::start().await;
    let mut options = Options {
        amqp: Some(broker.amqp_url()),
        worker_concurrency: 64,
        ..Options::default()
    };
    options.sandbox.latency_ms = 5;
    let app = TestApp::spawn_with(options).await;
    let (second, _stop_second) = app.another_worker();
    app.create_user("u1", "+62123456789").await;

    // The stream and the restart at once: the broker goes away once 300
    // messages have reached the provider, and comes back after OUTAGE.
    let stream = app.send_many("u1", MESSAGES);
    let restart = async {
        let busy = eventually(Duration::from_secs(60), || async {
            (app.sandbox.requests().len() >= 300).then_some(())
        })
        .await;
        assert!(busy.is_some(), "the stream never got going");
        broker.stop_app().await;
        let at_stop = app.sandbox.requests().len();
        tokio::time::sleep(OUTAGE).await;
        broker.start_app().await;
        let back = Instant::now();
        // What was in flight at the stop has finished by now.
        let at_start = app.sandbox.requests().len();
        let resumed = eventually(Duration::from_secs(30), || async {
            (app.sandbox.requests().len() > at_start).then_some(())
        })
        .await;
        assert!(
            resumed.is_some(),
            "delivery never resumed after the restart"
        );
        (at_stop, back.elapsed())
    };
    let (ids, (at_stop, resumed_after)) = tokio::join!(stream, restart);

    app.all_sent(MESSAGES as i64, Duration::from_secs(60)).await;
    let (calls, duplicates) = calls_by_id(&app);
    for id in &ids {
        assert!(calls.contains_key(id), "{id} never reached the provider");
    }
    // Nothing is left on the broker: not ready, not unacknowledged on a consumer.
    let queue = app.topology().deliveries();
    let empty = eventually(Duration::from_secs(20), || async {
        (queue_counts(&broker, &queue).await == Some((0, 0))).then_some(())
    })
    .await;
    let counts = queue_counts(&broker, &queue).await;
    assert!(
        empty.is_some(),
        "envelopes left on {queue}: (ready, unacked) = {counts:?}"
    );
    eprintln!(
        "broker restart: {MESSAGES} sent, 0 lost, 0 stuck, {duplicates} duplicate provider calls, \
         {at_stop} delivered before the stop, delivery resumed {resumed_after:?} after start_app"
    );
    assert_eq!(
        duplicates, 0,
        "no provider call is repeated: Postgres stayed up"
    );
    second.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs rabbitmq-server, PostgreSQL 15 and root: cargo test -- --include-ignored"]
async fn a_postgres_restart_under_load_is_503_while_down_and_loses_nothing() {
    let postgres = PrivatePostgres::start().await;
    let mut options = Options {
        postgres: Some(postgres.database_url("postgres")),
        ..Options::default()
    };
    // Deliveries still in flight when Postgres goes away.
    options.sandbox.latency_ms = 50;
    let app = TestApp::spawn_with(options).await;
    app.create_user("u1", "+62123456789").await;

    let mut accepted = app.send_many("u1", 200).await;
    postgres.stop().await;
    let down = Instant::now();
    // While it is down, nothing is accepted: 503 with Retry-After, never 202.
    let mut refused = 0;
    while down.elapsed() < OUTAGE {
        let response = app
            .post("/v1/users/u1/messages", &json!({"message": "while down"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], 503);
        refused += 1;
    }
    postgres.start_again().await;
    let back = Instant::now();

    // No kurir process was restarted: the API accepts again by itself...
    let first = app.accepted_again("u1").await;
    let accepting_after = back.elapsed();
    accepted.push(first);
    accepted.extend(app.send_many("u1", 200).await);

    // ...and the worker delivers everything that was accepted.
    let total = accepted.len() as i64;
    app.all_sent(total, Duration::from_secs(60)).await;
    let (calls, duplicates) = calls_by_id(&app);
    for id in &accepted {
        assert!(calls.contains_key(id), "{id} never reached the provider");
    }
    eprintln!(
        "postgres restart: {total} accepted and sent, 0 lost, 0 stuck, {refused} refused with 503 while down, \
         {duplicates} duplicate provider calls, the API accepted again {accepting_after:?} after the start"
    );
}
