//! `Idempotency-Key` on every creating POST, and per-item keys in batches:
//! a repeat gets the first response byte for byte and creates nothing.

use std::time::Duration;

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::TestApp;

/// Status, `Location` and the exact body bytes of a response.
async fn exact(response: Response) -> (StatusCode, Option<String>, Vec<u8>, bool) {
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned());
    let replayed = response.headers().get("idempotent-replayed").is_some();
    let body = response.bytes().await.unwrap().to_vec();
    (status, location, body, replayed)
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    let client = app.pool.get().await.unwrap();
    client.query_one(sql, &[]).await.unwrap().get(0)
}

async fn send_keyed(app: &TestApp, user: &str, key: &str, text: &str) -> Response {
    app.post(
        &format!("/v1/users/{user}/messages"),
        &json!({"message": text}),
    )
    .header("Idempotency-Key", key)
    .send()
    .await
    .unwrap()
}

#[tokio::test]
async fn a_repeated_send_gets_the_first_response_byte_for_byte_and_sends_once() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+6281200000001").await;

    let first = exact(send_keyed(&app, "u1", "order-42", "Halo!").await).await;
    assert_eq!(first.0, StatusCode::ACCEPTED);
    assert!(!first.3, "a first response is not a replay");
    // Formatting and field order are not part of "the same request".
    let again = app
        .http
        .post(app.url("/v1/users/u1/messages"))
        .bearer_auth(&app.key)
        .header("Idempotency-Key", "order-42")
        .header("content-type", "application/json")
        .body("{ \"message\" : \"Halo!\" }")
        .send()
        .await
        .unwrap();
    let again = exact(again).await;
    assert_eq!((again.0, &again.1, &again.2), (first.0, &first.1, &first.2));
    assert!(again.3, "a replay says so");

    let body: Value = serde_json::from_slice(&first.2).unwrap();
    let id = body["message_id"].as_str().unwrap();
    app.message_with_status(id, "sent").await;
    // Still the first response once the message is sent.
    let later = exact(send_keyed(&app, "u1", "order-42", "Halo!").await).await;
    assert_eq!(later.2, first.2);
    assert_eq!(count(&app, "SELECT count(*) FROM messages").await, 1);
    assert_eq!(app.sandbox_requests_for(id).len(), 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_message() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+6281200000001").await;
    let sends = (0..8).map(|_| send_keyed(&app, "u1", "same-key", "once"));
    let responses = futures_util::future::join_all(sends).await;
    let mut bodies = Vec::new();
    for response in responses {
        let (status, _, body, _) = exact(response).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        bodies.push(body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "one answer for all"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM messages").await, 1);
    assert_eq!(
        count(&app, "SELECT count(*) FROM idempotency_keys").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_to_two_api_processes_create_one_message() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+6281200000001").await;
    let second = app.another_api().await;
    let send = |base: String| {
        app.http
            .post(format!("{base}/v1/users/u1/messages"))
            .bearer_auth(&app.key)
            .header("Idempotency-Key", "two-processes")
            .json(&json!({"message": "once"}))
            .send()
    };
    // Each process commits its own group; the second claim waits on the
    // first's transaction and then finds the key taken.
    let sends = (0..8).map(|n| {
        send(if n % 2 == 0 {
            app.address.clone()
        } else {
            second.clone()
        })
    });
    let mut bodies = Vec::new();
    for response in futures_util::future::join_all(sends).await {
        let (status, _, body, _) = exact(response.unwrap()).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        bodies.push(body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "one answer for all"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM messages").await, 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+6281200000001").await;
    app.create_user("u2", "+6281200000002").await;
    assert_eq!(
        send_keyed(&app, "u1", "k1", "one").await.status(),
        StatusCode::ACCEPTED
    );
    for (user, text) in [("u1", "two"), ("u2", "one")] {
        let response = send_keyed(&app, user, "k1", text).await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            problem["errors"][0]["field"], "Idempotency-Key",
            "{problem}"
        );
    }
    // Another endpoint is another request, too.
    let response = app
        .post("/v1/users/u1/status", &json!({"status": "one"}))
        .header("Idempotency-Key", "k1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(count(&app, "SELECT count(*) FROM messages").await, 1);
    assert_eq!(count(&app, "SELECT count(*) FROM status_updates").await, 0);
}

#[tokio::test]
async fn keys_of_one_account_do_not_collide_with_another_s() {
    let app = TestApp::spawn().await;
    let other = app.key_for("other").await;
    app.create_user("u1", "+6281200000001").await;
    app.http
        .post(app.url("/v1/users"))
        .bearer_auth(&other)
        .json(&json!({"id": "u1", "name": "Other", "phone_number": "+6281200000001"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    let mine = exact(send_keyed(&app, "u1", "shared", "hi").await).await;
    let theirs = app
        .http
        .post(app.url("/v1/users/u1/messages"))
        .bearer_auth(&other)
        .header("Idempotency-Key", "shared")
        .json(&json!({"message": "hi"}))
        .send()
        .await
        .unwrap();
    let theirs = exact(theirs).await;
    assert_eq!(theirs.0, StatusCode::ACCEPTED);
    assert!(!theirs.3, "not a replay of another account's request");
    assert_ne!(mine.2, theirs.2);
    assert_eq!(count(&app, "SELECT count(*) FROM messages").await, 2);
}

#[tokio::test]
async fn status_updates_and_users_are_idempotent_too() {
    let app = TestApp::spawn().await;
    let user = json!({"id": "u1", "name": "Ana", "phone_number": "+6281200000001"});
    let create = || {
        app.post("/v1/users", &user)
            .header("Idempotency-Key", "new-user")
            .send()
    };
    let creates = futures_util::future::join_all((0..4).map(|_| create())).await;
    let mut bodies = Vec::new();
    for response in creates {
        let (status, location, body, _) = exact(response.unwrap()).await;
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(location.as_deref(), Some("/v1/users/u1"));
        bodies.push(body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "one answer for all"
    );
    // Without the key, the same body is the conflict it always was.
    let response = app.post("/v1/users", &user).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);

    let set = || {
        app.post("/v1/users/u1/status", &json!({"status": "away"}))
            .header("Idempotency-Key", "status-1")
            .send()
    };
    let first = exact(set().await.unwrap()).await;
    let again = exact(set().await.unwrap()).await;
    assert_eq!(first.0, StatusCode::ACCEPTED);
    assert_eq!((&first.1, &first.2), (&again.1, &again.2));
    assert!(again.3);
    assert_eq!(count(&app, "SELECT count(*) FROM status_updates").await, 1);
}

#[tokio::test]
async fn a_key_is_not_kept_for_a_request_that_stored_nothing() {
    let app = TestApp::spawn().await;
    let response = send_keyed(&app, "later", "k", "hi").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    app.create_user("later", "+6281200000001").await;
    let response = send_keyed(&app, "later", "k", "hi").await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.headers().get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn bad_keys_are_422_naming_the_header() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+6281200000001").await;
    for key in [String::new(), "k".repeat(256)] {
        let response = send_keyed(&app, "u1", &key, "hi").await;
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], "Idempotency-Key");
    }
    assert_eq!(count(&app, "SELECT count(*) FROM messages").await, 0);
}

#[tokio::test]
async fn batch_items_with_keys_are_stored_once() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+6281200000001").await;
    let batch = json!({"messages": [
        {"user_id": "u1", "message": "a", "idempotency_key": "item-a"},
        {"user_id": "u1", "message": "b"},
        {"user_id": "u1", "message": "a", "idempotency_key": "item-a"},
    ]});
    let first: Value = app
        .post("/v1/messages/batch", &batch)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let results = first["results"].as_array().unwrap();
    assert_eq!(
        results[0]["message_id"], results[2]["message_id"],
        "{first}"
    );
    assert_ne!(results[0]["message_id"], results[1]["message_id"]);
    assert_eq!(count(&app, "SELECT count(*) FROM messages").await, 2);

    let again: Value = app
        .post(
            "/v1/messages/batch",
            &json!({"messages": [
                {"user_id": "u1", "message": "a", "idempotency_key": "item-a"},
                {"user_id": "u1", "message": "other", "idempotency_key": "item-a"},
            ]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again["results"][0], results[0], "{again}");
    assert_eq!(again["results"][1]["error"]["status"], 422, "{again}");
    assert_eq!(
        again["results"][1]["error"]["errors"][0]["field"],
        "idempotency_key"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM messages").await, 2);
}

#[tokio::test]
async fn a_batch_with_a_key_is_answered_once() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+6281200000001").await;
    let batch = json!({"messages": [
        {"user_id": "u1", "message": "a"},
        {"user_id": "nobody", "message": "b"},
        {"user_id": "u1", "message": ""},
    ]});
    let post = |body: &Value| {
        app.post("/v1/messages/batch", body)
            .header("Idempotency-Key", "batch-1")
            .send()
    };
    let first = exact(post(&batch).await.unwrap()).await;
    assert_eq!(first.0, StatusCode::ACCEPTED);
    let again = exact(post(&batch).await.unwrap()).await;
    assert_eq!(again.2, first.2);
    assert!(again.3);
    assert_eq!(count(&app, "SELECT count(*) FROM messages").await, 1);

    let other = json!({"messages": [{"user_id": "u1", "message": "z"}]});
    let response = post(&other).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // A repeat whose first answer was lost before the batch's key kept it
    // (here: the batch's record is gone) stores none of its items twice.
    let client = app.pool.get().await.unwrap();
    client
        .execute("DELETE FROM idempotency_keys WHERE scope = 'request'", &[])
        .await
        .unwrap();
    let repeat = exact(post(&batch).await.unwrap()).await;
    let ids = |body: &[u8]| {
        let body: Value = serde_json::from_slice(body).unwrap();
        body["results"][0]["message_id"].clone()
    };
    assert_eq!(ids(&repeat.2), ids(&first.2));
    assert_eq!(count(&app, "SELECT count(*) FROM messages").await, 1);
}

#[tokio::test]
async fn expired_keys_are_claimed_anew_and_cleaned_up() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+6281200000001").await;
    let first = exact(send_keyed(&app, "u1", "old", "hi").await).await;
    let client = app.pool.get().await.unwrap();
    client
        .execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'",
            &[],
        )
        .await
        .unwrap();
    // Past 24 hours the key is free: a new message.
    let second = exact(send_keyed(&app, "u1", "old", "hi").await).await;
    assert_eq!(second.0, StatusCode::ACCEPTED);
    assert_ne!(second.2, first.2);
    assert_eq!(count(&app, "SELECT count(*) FROM messages").await, 2);

    // The cleanup deletes expired keys only, in batches.
    client
        .execute(
            "INSERT INTO idempotency_keys (account_id, scope, key, fingerprint, status, response, created_at)
             SELECT 1, 'item', 'expired-' || n, '\\x00', 202, '\\x00', now() - interval '2 days'
             FROM generate_series(1, 2500) AS n",
            &[],
        )
        .await
        .unwrap();
    let db = kurir_store::Db::new(app.pool.clone(), Duration::from_secs(5));
    let deleted = kurir_worker::housekeeping::delete_expired_keys(&db, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(deleted, 2500);
    assert_eq!(
        count(&app, "SELECT count(*) FROM idempotency_keys").await,
        1
    );
}

#[tokio::test]
async fn a_key_keeps_the_answer_a_waiting_request_got() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+6281200000001").await;
    let send = || {
        app.post("/v1/users/u1/messages", &json!({"message": "Halo!"}))
            .header("Idempotency-Key", "waited")
            .header("Prefer", "wait=10")
            .send()
    };
    let first = exact(send().await.unwrap()).await;
    assert_eq!(
        first.0,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&first.2)
    );
    let body: Value = serde_json::from_slice(&first.2).unwrap();
    assert_eq!(body["message_status"], "sent");
    let again = exact(send().await.unwrap()).await;
    assert_eq!((again.0, &again.1, &again.2), (first.0, &first.1, &first.2));
    assert!(again.3);
    assert_eq!(count(&app, "SELECT count(*) FROM messages").await, 1);
}
