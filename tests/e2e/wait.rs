//! `Prefer: wait=N` on the seed POSTs: the answer waits for the final state,
//! woken by the API's one LISTEN connection.

use std::time::{Duration, Instant};

use kurir_core::config;
use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{DEADLINE, Options, TestApp, eventually};

/// A sandbox this slow never answers within the worker's 2 s provider
/// timeout: its messages stay `queued`/`sending` until the test lowers it.
const STUCK_MS: u64 = 5_000;

async fn app_with(change: impl FnOnce(&mut Options)) -> TestApp {
    let mut options = Options::default();
    change(&mut options);
    TestApp::spawn_with(options).await
}

async fn send_waiting(app: &TestApp, user: &str, prefer: &str) -> Response {
    app.post(
        &format!("/v1/users/{user}/messages"),
        &json!({"message": "Halo!"}),
    )
    .header("Prefer", prefer)
    .send()
    .await
    .unwrap()
}

fn applied(response: &Response) -> Option<&str> {
    response
        .headers()
        .get("preference-applied")
        .map(|v| v.to_str().unwrap())
}

/// Waits until `count` messages are stored.
async fn stored(app: &TestApp, count: i64) {
    let client = app.pool.get().await.unwrap();
    eventually(DEADLINE, || async {
        let stored: i64 = client
            .query_one("SELECT count(*) FROM messages", &[])
            .await
            .unwrap()
            .get(0);
        (stored == count).then_some(())
    })
    .await
    .expect("the messages are stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_fast_delivery_answers_200_sent() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+6281200000001").await;

    let started = Instant::now();
    let response = send_waiting(&app, "u1", "wait=10").await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(applied(&response), Some("wait=10"));
    // Woken by the worker's notification, not by the end of the wait.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let id = body["message_id"].as_str().unwrap();
    assert_eq!(body, json!({"message_id": id, "message_status": "sent"}));
    assert_eq!(location, format!("/v1/messages/{id}"));
    assert_eq!(app.message(id).await["message_status"], "sent");
    assert_eq!(app.sandbox_requests_for(id).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_shorter_than_the_delivery_answers_202_with_the_current_state() {
    let mut options = Options::default();
    options.sandbox.latency_ms = STUCK_MS;
    let app = TestApp::spawn_with(options).await;
    app.create_user("u1", "+6281200000001").await;

    let response = send_waiting(&app, "u1", "wait=1").await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(applied(&response), Some("wait=1"));
    assert!(response.headers().contains_key("location"));
    let body: Value = response.json().await.unwrap();
    let state = body["message_status"].as_str().unwrap();
    assert!(["queued", "sending"].contains(&state), "{body}");
    // It was true: the message is still on its way, and gets there.
    app.sandbox.set_latency_ms(0);
    app.message_with_status(body["message_id"].as_str().unwrap(), "sent")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_client_that_waits_sees_sent_and_success() {
    let app = TestApp::spawn().await;
    app.create_user("user123", "+62123456789").await;

    let message = app
        .post(
            "/v1/users/user123/messages",
            &json!({"message": "Halo! Ini adalah pesan dari API WhatsApp."}),
        )
        .header("Prefer", "wait=10")
        .send()
        .await
        .unwrap();
    assert_eq!(message.status(), StatusCode::OK);
    let message: Value = message.json().await.unwrap();
    assert_eq!(message["message_status"], "sent", "{message}");

    let update = app
        .post(
            "/v1/users/user123/status",
            &json!({"status": "Sedang sibuk dalam rapat."}),
        )
        .header("Prefer", "wait=10")
        .send()
        .await
        .unwrap();
    assert_eq!(update.status(), StatusCode::OK);
    assert_eq!(applied(&update), Some("wait=10"));
    let location = update.headers()["location"].to_str().unwrap().to_owned();
    let update: Value = update.json().await.unwrap();
    let id = update["status_update_id"].as_str().unwrap();
    assert_eq!(
        update,
        json!({"status_update_id": id, "status_update": "success"})
    );
    assert_eq!(location, format!("/v1/status-updates/{id}"));
    let user = app.get_json("/v1/users/user123").await;
    assert_eq!(user["status"], "Sedang sibuk dalam rapat.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_provider_failure_answers_200_failed() {
    let app = TestApp::spawn().await;
    // The sandbox never accepts messages to this number (131026).
    app.create_user("nobody", "+15550000001").await;

    let response = send_waiting(&app, "nobody", "wait=10").await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(applied(&response), Some("wait=10"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message_status"], "failed", "{body}");
    let message = app.message(body["message_id"].as_str().unwrap()).await;
    assert_eq!(message["last_error"]["code"], "131026");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_over_thirty_seconds_is_applied_as_thirty() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+6281200000001").await;

    let response = send_waiting(&app, "u1", "respond-async, WAIT=\"3600\"; x=y").await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(applied(&response), Some("wait=30"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_wait_zero_wait_or_a_garbled_one_answers_202_at_once() {
    let app = app_with(|o| o.sandbox.latency_ms = STUCK_MS).await;
    app.create_user("u1", "+6281200000001").await;

    for prefer in ["wait=0", "wait=soon", "wait", "respond-async", "wait=-3"] {
        let response = send_waiting(&app, "u1", prefer).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{prefer}");
        assert_eq!(applied(&response), None, "{prefer}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["message_status"], "queued", "{prefer}");
    }
    // The batch endpoint does not wait.
    let response = app
        .post(
            "/v1/messages/batch",
            &json!({"messages": [{"user_id": "u1", "message": "hi"}]}),
        )
        .header("Prefer", "wait=10")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(applied(&response), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_rows_a_request_waits_for_are_announced() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+6281200000001").await;
    let config: tokio_postgres::Config = app.database_args.database_url.parse().unwrap();
    let (listener, mut connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    listener.batch_execute("LISTEN kurir_done").await.unwrap();

    let unwaited = app.send("u1", "nobody waits").await;
    app.message_with_status(&unwaited, "sent").await;
    let response = send_waiting(&app, "u1", "wait=10").await;
    assert_eq!(response.status(), StatusCode::OK);
    let waited: Value = response.json().await.unwrap();
    let waited = waited["message_id"].as_str().unwrap();

    // Notifications come in commit order: all before the waited row's are in.
    let mut payloads = Vec::new();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(payload) = heard.recv().await {
            let done = payload.contains(waited);
            payloads.push(payload);
            if done {
                return;
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no notification for {waited}: {payloads:?}");
    assert_eq!(payloads, vec![format!("message {waited}:sent")]);
    drop(listener);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_waiting_requests_share_one_listener() {
    let app = app_with(|o| {
        o.sandbox.latency_ms = STUCK_MS;
        o.worker_concurrency = 64;
    })
    .await;
    app.create_user("u1", "+6281200000001").await;

    let waiting: Vec<_> = (0..50)
        .map(|_| {
            let request = app
                .post("/v1/users/u1/messages", &json!({"message": "Halo!"}))
                .header("Prefer", "wait=30");
            tokio::spawn(async move { request.send().await.unwrap() })
        })
        .collect();
    stored(&app, 50).await;

    let client = app.pool.get().await.unwrap();
    let listeners: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN kurir_done%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(listeners, 1, "one LISTEN connection for the whole API");

    app.sandbox.set_latency_ms(0);
    let sending = Instant::now();
    for request in waiting {
        let response = request.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["message_status"], "sent", "{body}");
    }
    // Woken as their messages were sent, not at the end of their waits.
    assert!(
        sending.elapsed() < Duration::from_secs(25),
        "{:?}",
        sending.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_missed_while_the_listener_was_away_is_read_when_it_is_back() {
    let app = app_with(|o| {
        o.sandbox.latency_ms = STUCK_MS;
        o.proxy_api_postgres = true;
    })
    .await;
    app.create_user("u1", "+6281200000001").await;
    let started = Instant::now();
    let request = app
        .post("/v1/users/u1/messages", &json!({"message": "Halo!"}))
        .header("Prefer", "wait=30");
    let waiting = tokio::spawn(async move { request.send().await.unwrap() });
    stored(&app, 1).await;

    // The API loses Postgres, its listener with it; meanwhile the worker
    // (not behind the proxy) sends the message and NOTIFYs nobody.
    let proxy = app.api_postgres.as_ref().unwrap();
    proxy.cut();
    app.sandbox.set_latency_ms(0);
    app.all_sent(1, DEADLINE).await;
    proxy.restore();

    let response = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message_status"], "sent", "{body}");
    // Told by the read after the reconnect, not by the end of the wait.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_request_is_answered_at_shutdown() {
    let app = app_with(|o| o.sandbox.latency_ms = STUCK_MS).await;
    app.create_user("u1", "+6281200000001").await;
    // A server of this test's own, to stop it without stopping the app.
    let config = kurir_api::Config {
        database: app.database_args.clone(),
        bus: app.bus_args.clone(),
        shutdown: config::defaults(),
        api: config::defaults(),
    };
    let shutdown = CancellationToken::new();
    let state = kurir_api::AppState::new(&config, &shutdown).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/v1/users/u1/messages",
        listener.local_addr().unwrap()
    );
    let server = tokio::spawn(kurir_api::serve(state, listener, shutdown.clone()));
    let request = app
        .http
        .post(url)
        .bearer_auth(&app.key)
        .header("Prefer", "wait=30")
        .json(&json!({"message": "Halo!"}));
    let waiting = tokio::spawn(async move { request.send().await.unwrap() });
    stored(&app, 1).await;

    let stopping = Instant::now();
    shutdown.cancel();
    let response = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("a waiting request is answered at shutdown, not after its wait")
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(applied(&response), Some("wait=30"));
    let body: Value = response.json().await.unwrap();
    let state = body["message_status"].as_str().unwrap();
    assert!(["queued", "sending"].contains(&state), "{body}");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_expires_while_waited_for_answers_200_failed() {
    let mut app = app_with(|o| o.start_worker = false).await;
    app.create_user("u1", "+6281200000001").await;
    let started = Instant::now();
    let request = app
        .post("/v1/users/u1/messages", &json!({"message": "too late"}))
        .header("Prefer", "wait=30");
    let waiting = tokio::spawn(async move { request.send().await.unwrap() });
    stored(&app, 1).await;
    // As if it had waited out an outage past KURIR_RETRY_MAX_AGE (24 h):
    // the worker fails it without calling the provider.
    let client = app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE messages SET created_at = now() - interval '25 hours'",
            &[],
        )
        .await
        .unwrap();
    app.start_worker();

    let response = waiting.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["message_status"], "failed", "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    let message = app.message(body["message_id"].as_str().unwrap()).await;
    assert_eq!(message["last_error"]["code"], "expired");
}
