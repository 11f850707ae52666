//! One account never sees or touches another's users, messages or status
//! updates: another account's ids are 404, exactly like unknown ones.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_cannot_see_or_touch_anothers_data() {
    let app = TestApp::spawn().await;
    app.create_user("alice", "+62811111111").await;
    let message = app.send("alice", "for alice").await;
    let update = app.set_status("alice", "here").await;

    let other = app.key_for("test-b").await;
    let get = |path: String| app.http.get(app.url(&path)).bearer_auth(&other).send();
    let post = |path: String, body: Value| {
        app.http
            .post(app.url(&path))
            .bearer_auth(&other)
            .json(&body)
            .send()
    };

    for path in [
        "/v1/users/alice".to_owned(),
        "/v1/users/alice/messages".to_owned(),
        format!("/v1/messages/{message}"),
        format!("/v1/status-updates/{update}"),
    ] {
        assert_eq!(
            get(path.clone()).await.unwrap().status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    let sent = post("/v1/users/alice/messages".into(), json!({"message": "hi"}))
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::NOT_FOUND);
    let status = post(
        "/v1/users/alice/status".into(),
        json!({"status": "mine now"}),
    )
    .await
    .unwrap();
    assert_eq!(status.status(), StatusCode::NOT_FOUND);
    let list: Value = get("/v1/users".into()).await.unwrap().json().await.unwrap();
    assert_eq!(list["users"], json!([]));

    // The same user id and phone number are free in another account.
    let created = post(
        "/v1/users".into(),
        json!({"id": "alice", "name": "Other Alice", "phone_number": "+62811111111"}),
    )
    .await
    .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let theirs: Value = get("/v1/users/alice".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(theirs["name"], "Other Alice");
    let ours: Value = app.get_json("/v1/users/alice").await;
    assert_eq!(ours["name"], "User alice");
    let our_list: Value = app.get_json("/v1/users/alice/messages").await;
    assert_eq!(our_list["messages"].as_array().unwrap().len(), 1);
    let their_list: Value = get("/v1/users/alice/messages".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(their_list["messages"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_accounts_delivery_attempts_are_404() {
    let app = TestApp::spawn().await;
    app.create_user("alice", "+62811111111").await;
    let message = app.send("alice", "for alice").await;
    app.message_with_status(&message, "sent").await;
    let update = app.set_status("alice", "here").await;
    app.status_update_until(&update, |u| u["status_update"] == "success")
        .await;

    let ours = [
        format!("/v1/messages/{message}/attempts"),
        format!("/v1/status-updates/{update}/attempts"),
    ];
    for path in &ours {
        let history: Value = app.get_json(path).await;
        assert_eq!(history["attempts"].as_array().unwrap().len(), 1, "{path}");
    }
    let other = app.key_for("test-b").await;
    for path in &ours {
        let response = app
            .http
            .get(app.url(path))
            .bearer_auth(&other)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
}
