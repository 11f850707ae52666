//! The failure model: a dependency going away never loses an accepted
//! message and never makes the API claim it stored something it did not.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{DEADLINE, Options, TestApp, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_postgres_down_the_api_answers_503_and_never_202() {
    let app = TestApp::spawn_with(Options {
        proxy_api_postgres: true,
        ..Options::default()
    })
    .await;
    app.create_user("u1", "+62123456789").await;
    let postgres = app.api_postgres.as_ref().unwrap();

    postgres.cut();
    let send = app
        .post("/v1/users/u1/messages", &json!({"message": "lost?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(send.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(send.headers()["retry-after"], "1");
    assert_eq!(send.headers()["content-type"], "application/problem+json");
    let status = app
        .post("/v1/users/u1/status", &json!({"status": "away"}))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::SERVICE_UNAVAILABLE);
    let batch = app
        .post(
            "/v1/messages/batch",
            &json!({"messages": [{"user_id": "u1", "message": "lost too?"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(batch.headers()["retry-after"], "1");
    let get = app.get("/v1/users/u1").send().await.unwrap();
    assert_eq!(get.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["postgres"], "unavailable");

    postgres.restore();
    let id = app.accepted_again("u1").await;
    app.message_with_status(&id, "sent").await;
    // The refused message was never stored.
    let list: Value = app.get_json("/v1/users/u1/messages").await;
    assert_eq!(list["messages"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_cut_off_the_api_still_accepts_and_everything_is_delivered_after() {
    let app = TestApp::spawn_with(Options {
        proxy_broker: true,
        ..Options::default()
    })
    .await;
    app.create_user("u1", "+62123456789").await;
    let before = app.send("u1", "before").await;
    app.message_with_status(&before, "sent").await;

    let broker = app.broker.as_ref().unwrap();
    broker.cut();
    let mut during = Vec::new();
    for n in 0..10 {
        during.push(app.send("u1", &format!("during {n}")).await);
    }
    broker.restore();

    for id in &during {
        app.message_with_status(id, "sent").await;
        assert_eq!(
            app.sandbox_requests_for(id).len(),
            1,
            "{id} delivered exactly once"
        );
    }
    // The connections recovered by themselves: a new message flows at once.
    let after = app.send("u1", "after").await;
    app.message_with_status(&after, "sent").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_at_the_worker_delays_delivery_but_loses_nothing() {
    let app = TestApp::spawn_with(Options {
        proxy_worker_postgres: true,
        ..Options::default()
    })
    .await;
    app.create_user("u1", "+62123456789").await;
    let postgres = app.worker_postgres.as_ref().unwrap();

    postgres.cut();
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(app.send("u1", &format!("waiting {n}")).await);
    }
    // While the worker cannot reach Postgres it cannot claim: nothing is sent.
    for id in &ids {
        assert_eq!(app.message(id).await["message_status"], "queued");
    }
    postgres.restore();
    for id in &ids {
        app.message_with_status(id, "sent").await;
        assert_eq!(
            app.sandbox_requests_for(id).len(),
            1,
            "{id} delivered exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_mid_delivery_loses_nothing() {
    let mut options = Options {
        // Over provider timeout (2s) + 1s + database timeout (2s).
        delivery_lease: std::time::Duration::from_secs(6),
        ..Options::default()
    };
    options.sandbox.latency_ms = 1500;
    let mut app = TestApp::spawn_with(options).await;
    app.create_user("u1", "+62123456789").await;
    let id = app.send("u1", "in flight").await;

    app.message_with_status(&id, "sending").await;
    app.kill_worker();
    app.sandbox.set_latency_ms(0);
    app.start_worker();

    // The dead worker's lease expires, the relay re-queues the row, the new
    // worker delivers it. Its provider call may have gone out too:
    // at-least-once, and both carried the same message id.
    let sent = app.message_with_status(&id, "sent").await;
    assert_eq!(sent["attempts"], 2);
    let seen = app.sandbox_requests_for(&id);
    assert!(
        (1..=2).contains(&seen.len()),
        "{} provider calls",
        seen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_deleted_under_two_workers_loses_nothing_and_both_find_the_new_queue() {
    let mut options = Options {
        worker_concurrency: 2,
        ..Options::default()
    };
    // Slow deliveries keep envelopes waiting in the queue, so a worker whose
    // consumer is orphaned sits idle while its queue is not empty.
    options.sandbox.latency_ms = 300;
    let app = TestApp::spawn_with(options).await;
    let (other, _stop_other) = app.another_worker();
    app.create_user("u1", "+62123456789").await;
    let before = app.send("u1", "before").await;
    app.message_with_status(&before, "sent").await;
    let both = eventually(DEADLINE, || async {
        (app.consumers().await == 2).then_some(())
    })
    .await;
    assert!(both.is_some(), "both workers consume");

    // RabbitMQ 3.10 does not cancel the consumers of a deleted quorum queue.
    // The first publish after the delete is unroutable: the publisher declares
    // the topology again and the relay publishes the rows to the new queue.
    app.delete_deliveries_queue().await;
    let mut after = Vec::new();
    for n in 0..30 {
        after.push(app.send("u1", &format!("after {n}")).await);
    }
    for id in &after {
        app.message_with_status(id, "sent").await;
    }
    for id in &after {
        assert_eq!(
            app.sandbox_requests_for(id).len(),
            1,
            "{id} delivered exactly once"
        );
    }
    // Neither worker was restarted: each noticed on its own.
    let both = eventually(DEADLINE, || async {
        (app.consumers().await == 2).then_some(())
    })
    .await;
    assert!(both.is_some(), "both workers consume the new queue");
    other.abort();
}
