//! Delivery outcomes: retries, permanent failures, Retry-After, the relay.

use std::time::Duration;

use chrono::DurationRound;
use kurir_store::pipeline::AttemptOutcome;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Options, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_fails_twice_then_succeeds_ends_sent_after_three_attempts() {
    let app = TestApp::spawn().await;
    app.create_user("flaky", "+15550000002").await;
    let id = app.send("flaky", "third time lucky").await;

    let sent = app.message_with_status(&id, "sent").await;
    assert_eq!(sent["attempts"], 3);
    assert!(sent["next_attempt_at"].is_null());
    // The failures explain nothing once it is sent: they are history.
    assert!(sent["last_error"].is_null(), "{sent:#}");

    let history: Value = app.get_json(&format!("/v1/messages/{id}/attempts")).await;
    let history = history["attempts"].as_array().unwrap();
    let seen: Vec<_> = history
        .iter()
        .map(|a| {
            (
                a["number"].as_i64().unwrap(),
                a["outcome"].as_str().unwrap(),
                a["http_status"].as_i64(),
                a["code"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (1, "retryable", Some(503), Some("131016")),
            (2, "retryable", Some(503), Some("131016")),
            (3, "delivered", Some(200), None),
        ]
    );
    assert!(
        history[0]["detail"]
            .as_str()
            .unwrap()
            .contains("fails attempt 1 of 2"),
        "{history:#?}"
    );
    assert!(history[2]["detail"].is_null());
    assert!(
        history
            .iter()
            .all(|a| a["latency_ms"].as_i64().unwrap() >= 0)
    );
    let started: Vec<chrono::DateTime<chrono::Utc>> = history
        .iter()
        .map(|a| a["started_at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(started.is_sorted(), "oldest first: {started:?}");

    let attempts = app.attempts(&id).await;
    let outcomes: Vec<_> = attempts
        .iter()
        .map(|a| (a.attempt, a.outcome, a.http_status))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, AttemptOutcome::Retryable, Some(503)),
            (2, AttemptOutcome::Retryable, Some(503)),
            (3, AttemptOutcome::Delivered, Some(200)),
        ]
    );
    assert!(
        attempts[..2]
            .iter()
            .all(|a| a.error_code.as_deref() == Some("131016"))
    );
    assert!(attempts.iter().all(|a| a.provider == "whatsapp"));
    assert_eq!(app.sandbox_requests_for(&id).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_ends_failed_with_the_providers_code_and_is_not_retried() {
    let app = TestApp::spawn().await;
    app.create_user("gone", "+15550000001").await;
    app.create_user("fine", "+62123456789").await;
    let id = app.send("gone", "nobody home").await;

    let failed = app.message_with_status(&id, "failed").await;
    assert_eq!(failed["attempts"], 1);
    assert_eq!(failed["last_error"]["code"], "131026");
    assert_eq!(failed["last_error"]["retryable"], false);
    assert!(
        failed["last_error"]["detail"]
            .as_str()
            .unwrap()
            .contains("undeliverable")
    );
    assert!(failed["failed_at"].is_string());
    assert!(failed["next_attempt_at"].is_null());

    // A later message goes through the same worker; by then a retry of the
    // failed one would have been due long ago (the first retry waits ~100ms).
    let later = app.send("fine", "after").await;
    app.message_with_status(&later, "sent").await;
    tokio::task::yield_now().await;
    assert_eq!(app.sandbox_requests_for(&id).len(), 1);
    let attempts = app.attempts(&id).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].outcome, AttemptOutcome::Permanent);
    assert_eq!(attempts[0].http_status, Some(400));

    let failed_list: Value = app.get_json("/v1/users/gone/messages?status=failed").await;
    assert_eq!(failed_list["messages"].as_array().unwrap().len(), 1);
    let sent_list: Value = app.get_json("/v1/users/gone/messages?status=sent").await;
    assert_eq!(sent_list["messages"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_not_retried_sooner() {
    let mut options = Options::default();
    options.sandbox.throttle_rate = 1.0;
    options.sandbox.retry_after_secs = 2;
    // Our own backoff would retry after ~100 ms; the provider asked for 2 s.
    options.retry_initial = Duration::from_millis(100);
    let app = TestApp::spawn_with(options).await;
    app.create_user("busy", "+62123456789").await;
    let id = app.send("busy", "when you can").await;

    // The waiting retry shows in polling: queued, attempts 1, next_attempt_at set.
    let waiting = app
        .message_until(&id, |m| {
            m["attempts"] == 1 && m["message_status"] == "queued"
        })
        .await;
    assert_eq!(waiting["last_error"]["code"], "130429");
    // The API shows milliseconds; compare at that precision.
    let first = app.sandbox_requests_for(&id)[0]
        .received_at
        .duration_trunc(chrono::Duration::milliseconds(1))
        .unwrap();
    let next: chrono::DateTime<chrono::Utc> = waiting["next_attempt_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        next >= first + chrono::Duration::seconds(2),
        "next attempt {next} is sooner than 2s after {first}"
    );

    app.sandbox.set_throttle_rate(0.0);
    let sent = app.message_with_status(&id, "sent").await;
    assert_eq!(sent["attempts"], 2);
    let requests = app.sandbox_requests_for(&id);
    assert_eq!(requests.len(), 2);
    let gap = requests[1].received_at - requests[0].received_at;
    assert!(
        gap >= chrono::Duration::seconds(2),
        "retried after only {gap}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_accepted_while_publishing_fails_is_delivered_by_the_relay() {
    // The API's broker is unreachable; the worker's is fine.
    let options = Options {
        api_amqp_url: Some("amqp://guest:guest@127.0.0.1:9/%2f".into()),
        publish_lease: Duration::from_secs(1),
        ..Options::default()
    };
    let app = TestApp::spawn_with(options).await;
    app.create_user("u1", "+62123456789").await;
    let id = app.send("u1", "via the relay").await;

    let ready: Value = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["rabbitmq"], "unavailable",
        "the API cannot have published it"
    );
    let sent = app.message_with_status(&id, "sent").await;
    assert_eq!(sent["attempts"], 1);
    assert_eq!(app.sandbox_requests_for(&id).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_accepted_with_no_worker_running_wait_and_are_delivered_once_one_starts() {
    let options = Options {
        start_worker: false,
        ..Options::default()
    };
    let mut app = TestApp::spawn_with(options).await;
    app.create_user("u1", "+62123456789").await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(app.send("u1", &format!("backlog {n}")).await);
    }
    assert_eq!(app.message(&ids[0]).await["message_status"], "queued");
    app.start_worker();
    for id in &ids {
        app.message_with_status(id, "sent").await;
        assert_eq!(
            app.sandbox_requests_for(id).len(),
            1,
            "delivered exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_cut_off_by_the_shutdown_grace_gives_its_row_back_at_once() {
    let mut options = Options {
        shutdown_grace: Duration::from_millis(200),
        delivery_lease: Duration::from_secs(30),
        ..Options::default()
    };
    options.sandbox.latency_ms = 1500;
    let mut app = TestApp::spawn_with(options).await;
    app.create_user("u1", "+62123456789").await;
    let id = app.send("u1", "cut off").await;
    app.message_with_status(&id, "sending").await;

    app.stop_worker().await;
    // Neither waited for (it would be sent) nor left for its 30 s lease:
    // the delivery gave its row back when the grace ended.
    let message = app.message(&id).await;
    assert_eq!(message["message_status"], "queued", "{message:#}");
    assert_eq!(message["attempts"], 1);

    app.sandbox.set_latency_ms(0);
    app.start_worker();
    let sent = app.message_with_status(&id, "sent").await;
    assert_eq!(sent["attempts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_update_shows_its_attempts_and_no_error_once_it_succeeds() {
    let mut options = Options::default();
    options.sandbox.fail_rate = 1.0;
    let app = TestApp::spawn_with(options).await;
    app.create_user("u1", "+62123456789").await;
    let id = app.set_status("u1", "in a meeting").await;

    // Failing, it shows why.
    let failing = app
        .status_update_until(&id, |u| {
            u["attempts"].as_i64() >= Some(1) && !u["last_error"].is_null()
        })
        .await;
    assert_eq!(failing["status_update"], "queued");
    assert_eq!(failing["last_error"]["retryable"], true);

    app.sandbox.set_fail_rate(0.0);
    let done = app
        .status_update_until(&id, |u| u["status_update"] == "success")
        .await;
    assert!(done["last_error"].is_null(), "{done:#}");

    let history: Value = app
        .get_json(&format!("/v1/status-updates/{id}/attempts"))
        .await;
    let history = history["attempts"].as_array().unwrap();
    assert_eq!(history.len() as i64, done["attempts"].as_i64().unwrap());
    let (last, failures) = history.split_last().unwrap();
    assert!(!failures.is_empty());
    for (n, failure) in failures.iter().enumerate() {
        assert_eq!(failure["number"], n + 1);
        assert_eq!(failure["outcome"], "retryable");
        assert_eq!(failure["http_status"], 500);
        assert!(failure["code"].is_string());
    }
    assert_eq!(last["number"], history.len());
    assert_eq!(last["outcome"], "delivered");
    assert_eq!(last["http_status"], 200);
    assert!(last["code"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_claimed_past_its_retry_deadline_fails_as_expired_without_an_attempt() {
    let options = Options {
        start_worker: false,
        ..Options::default()
    };
    let mut app = TestApp::spawn_with(options).await;
    app.create_user("u1", "+62123456789").await;
    let id = app.send("u1", "too late").await;
    // It waited out an outage longer than KURIR_RETRY_MAX_AGE (24 h by default).
    let client = app.pool.get().await.unwrap();
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let aged = client
        .execute(
            "UPDATE messages SET created_at = now() - interval '25 hours' WHERE id = $1",
            &[&uuid],
        )
        .await
        .unwrap();
    assert_eq!(aged, 1);
    app.start_worker();

    let failed = app.message_with_status(&id, "failed").await;
    assert_eq!(failed["last_error"]["code"], "expired");
    assert_eq!(failed["last_error"]["retryable"], false);
    let detail = failed["last_error"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("not delivered within KURIR_RETRY_MAX_AGE"),
        "{detail}"
    );
    assert!(failed["failed_at"].is_string());
    // No provider call was made, so there is no attempt to show.
    assert_eq!(failed["attempts"], 0);
    let history: Value = app.get_json(&format!("/v1/messages/{id}/attempts")).await;
    assert_eq!(history, json!({"attempts": []}));
    assert!(app.attempts(&id).await.is_empty());
    assert!(app.sandbox_requests_for(&id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_until_it_is_told_to_stop_however_long_that_takes() {
    let options = Options {
        shutdown_grace: Duration::ZERO,
        start_worker: false,
        ..Options::default()
    };
    let app = TestApp::spawn_with(options).await;
    app.create_user("u1", "+62123456789").await;
    let (worker, stop) = app.another_worker();
    let waiting = tokio::spawn(worker.wait());
    // Past the limit that bounds a stop (grace + database timeout + 5 s):
    // nothing was told to stop, so nothing stops.
    let limit = Duration::from_secs(2) + Duration::from_secs(5) + Duration::from_secs(1);
    let early = tokio::time::timeout(limit, async {
        while !waiting.is_finished() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(early.is_err(), "the worker stopped without being told to");
    let id = app.send("u1", "still working").await;
    app.message_with_status(&id, "sent").await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the worker stops once told to")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_committed_together_each_get_their_own_answer() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+62123456789").await;
    // Many at once, so that they share commits; every other one names a
    // user that does not exist, which fails that request alone.
    let sends = (0..64).map(|n| {
        let user = if n % 2 == 0 { "u1" } else { "nobody" };
        let app = &app;
        async move {
            let response = app
                .post(
                    &format!("/v1/users/{user}/messages"),
                    &json!({"message": format!("together {n}")}),
                )
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (user, status, body)
        }
    });
    let answers = futures_util::future::join_all(sends).await;
    let mut accepted = Vec::new();
    for (user, status, body) in answers {
        if user == "u1" {
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            assert_eq!(body["message_status"], "queued");
            accepted.push(body["message_id"].as_str().unwrap().to_owned());
        } else {
            assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
            assert_eq!(body["type"], "https://kurir.dev/problems/not-found");
        }
    }
    assert_eq!(accepted.len(), 32);
    for id in &accepted {
        app.message_with_status(id, "sent").await;
    }
    let listed = app.get_json("/v1/users/u1/messages?limit=100").await;
    assert_eq!(listed["messages"].as_array().unwrap().len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_status_updates_committed_together_each_get_their_own_answer() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+62123456789").await;
    // Both kinds in the same batches, some for a user that does not exist.
    let requests = (0..40).map(|n| {
        let user = if n % 4 == 3 { "nobody" } else { "u1" };
        let (path, body) = if n % 2 == 0 {
            (
                format!("/v1/users/{user}/messages"),
                json!({"message": format!("mixed {n}")}),
            )
        } else {
            (
                format!("/v1/users/{user}/status"),
                json!({"status": format!("status {n}")}),
            )
        };
        let app = &app;
        async move {
            let response = app.post(&path, &body).send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (n, user, status, body)
        }
    });
    let answers = futures_util::future::join_all(requests).await;
    let mut updates = Vec::new();
    for (n, user, status, body) in answers {
        if user == "nobody" {
            assert_eq!(status, StatusCode::NOT_FOUND, "{n}: {body}");
            continue;
        }
        assert_eq!(status, StatusCode::ACCEPTED, "{n}: {body}");
        if n % 2 == 0 {
            assert_eq!(body["message_status"], "queued");
            let id = body["message_id"].as_str().unwrap().to_owned();
            app.message_with_status(&id, "sent").await;
        } else {
            assert_eq!(body["status_update"], "queued");
            updates.push(body["status_update_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(updates.len(), 10);
    for id in &updates {
        app.status_update_until(id, |u| u["status_update"] == "success")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_item_in_order_and_accepts_the_valid_ones() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+62123456789").await;
    let body = json!({"messages": [
        {"user_id": "u1", "message": "first"},
        {"user_id": "nobody", "message": "no such user"},
        {"user_id": "u1", "message": "   "},
        {"user_id": "u1", "message": "typo", "mesage": "x"},
        {"user_id": "u1", "message": "keyed", "idempotency_key": ""},
        5,
        {"message": "who?"},
        {"user_id": "u1", "message": "last"},
    ]});
    let response = app.post("/v1/messages/batch", &body).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 8, "{answer:#}");
    let status = |i: usize| results[i]["error"]["status"].as_u64();
    let field = |i: usize| {
        results[i]["error"]["errors"][0]["field"]
            .as_str()
            .map(str::to_owned)
    };
    for i in [0, 7] {
        assert_eq!(results[i]["message_status"], "queued", "{i}: {answer:#}");
    }
    assert_eq!(status(1), Some(404));
    assert_eq!(
        (status(2), field(2).as_deref()),
        (Some(422), Some("message"))
    );
    assert_eq!(
        (status(3), field(3).as_deref()),
        (Some(422), Some("mesage"))
    );
    assert_eq!(
        (status(4), field(4).as_deref()),
        (Some(422), Some("idempotency_key"))
    );
    assert_eq!(status(5), Some(422));
    assert_eq!(
        (status(6), field(6).as_deref()),
        (Some(422), Some("user_id"))
    );
    for i in [0, 7] {
        let id = results[i]["message_id"].as_str().unwrap();
        let sent = app.message_with_status(id, "sent").await;
        assert_eq!(sent["user_id"], "u1");
    }
    let listed = app.get_json("/v1/users/u1/messages").await;
    assert_eq!(listed["messages"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_must_have_one_to_a_thousand_items() {
    let app = TestApp::spawn_with(Options {
        start_worker: false,
        ..Options::default()
    })
    .await;
    app.create_user("u1", "+62123456789").await;
    let item = json!({"user_id": "u1", "message": "m"});
    for (body, what) in [
        (json!({"messages": []}), "empty"),
        (json!({"messages": vec![item.clone(); 1001]}), "too many"),
        (json!({}), "missing"),
    ] {
        let response = app.post("/v1/messages/batch", &body).send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what}"
        );
        let problem: Value = response.json().await.unwrap();
        assert_eq!(
            problem["errors"][0]["field"], "messages",
            "{what}: {problem:#}"
        );
    }
    // A thousand go in (grouped: multi-row statements, one answer each).
    let body = json!({"messages": vec![item; 1000]});
    let response = app.post("/v1/messages/batch", &body).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(|r| r["message_status"] == "queued"));
    assert_eq!(app.count_in_state("queued").await, 1000);
}
