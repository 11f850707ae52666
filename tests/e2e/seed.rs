//! The seed document's three endpoints, as a seed client uses them.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{DEADLINE, TestApp, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_flow_lists_users_sends_a_message_and_updates_a_status() {
    let app = TestApp::spawn().await;

    let created = app
        .post(
            "/v1/users",
            &json!({"id": "user123", "name": "John Doe", "phone_number": "+62123456789",
                    "profile_image": "https://example.com/users/user123.jpg", "status": "online"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(created.headers()["location"], "/v1/users/user123");
    app.post(
        "/v1/users",
        &json!({"id": "user456", "name": "Jane Smith", "phone_number": "+62876543210",
                "profile_image": "https://example.com/users/user456.jpg", "status": "offline"}),
    )
    .send()
    .await
    .unwrap();

    // List: the seed's shape, seed fields on every user, in creation order.
    let list: Value = app.get_json("/v1/users").await;
    let users = list["users"].as_array().unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(users[0]["id"], "user123");
    assert_eq!(users[0]["name"], "John Doe");
    assert_eq!(users[0]["phone_number"], "+62123456789");
    assert_eq!(
        users[0]["profile_image"],
        "https://example.com/users/user123.jpg"
    );
    assert_eq!(users[0]["status"], "online");
    assert_eq!(users[1]["id"], "user456");
    assert_eq!(users[1]["status"], "offline");
    assert!(list["next_cursor"].is_null());

    // Send: 202 queued, then polled to sent; the provider saw it with our id.
    let response = app
        .post(
            "/v1/users/user123/messages",
            &json!({"message": "Halo! Ini adalah pesan dari API WhatsApp."}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["message_status"], "queued");
    let id = accepted["message_id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/messages/{id}"));
    let sent = app.message_with_status(id, "sent").await;
    assert_eq!(sent["attempts"], 1);
    assert_eq!(sent["user_id"], "user123");
    assert_eq!(sent["message"], "Halo! Ini adalah pesan dari API WhatsApp.");
    assert!(
        sent["provider_message_id"]
            .as_str()
            .unwrap()
            .starts_with("wamid.")
    );
    assert!(sent["sent_at"].is_string());
    assert!(sent["last_error"].is_null());
    let seen = app.sandbox_requests_for(id);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].to.as_deref(), Some("62123456789"));
    assert_eq!(
        seen[0].body.as_deref(),
        Some("Halo! Ini adalah pesan dari API WhatsApp.")
    );
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer test-token"));

    // Status: 202 queued, then success, and the user's status is the new text.
    let response = app
        .post(
            "/v1/users/user123/status",
            &json!({"status": "Sedang sibuk dalam rapat."}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["status_update"], "queued");
    let update_id = accepted["status_update_id"].as_str().unwrap().to_owned();
    let done = eventually(DEADLINE, || async {
        let update: Value = app
            .get_json(&format!("/v1/status-updates/{update_id}"))
            .await;
        (update["status_update"] == "success").then_some(update)
    })
    .await
    .expect("the status update succeeds");
    assert_eq!(done["status"], "Sedang sibuk dalam rapat.");
    assert_eq!(done["user_id"], "user123");
    assert_eq!(done["attempts"], 1);
    let user: Value = app.get_json("/v1/users/user123").await;
    assert_eq!(user["status"], "Sedang sibuk dalam rapat.");
    let profile = app
        .sandbox
        .requests()
        .into_iter()
        .find(|r| r.about.as_deref() == Some("Sedang sibuk dalam rapat."));
    assert!(profile.is_some(), "the provider got the about text");

    // The user's messages, newest first.
    app.send("user123", "second").await;
    let list: Value = app.get_json("/v1/users/user123/messages").await;
    let messages = list["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0]["message"], "second");
    assert_eq!(messages[1]["message_id"], id);
}
