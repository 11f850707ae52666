//! Users: conflicts, generated ids, stable paging.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_and_phone_numbers_are_409_naming_the_field() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+62123456789").await;
    let same_id = app
        .post(
            "/v1/users",
            &json!({"id": "u1", "name": "X", "phone_number": "+62999999999"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(same_id.status(), StatusCode::CONFLICT);
    let body: Value = same_id.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "id");
    let same_phone = app
        .post(
            "/v1/users",
            &json!({"id": "u2", "name": "X", "phone_number": "+62123456789"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(same_phone.status(), StatusCode::CONFLICT);
    let body: Value = same_phone.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], "phone_number");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_without_an_id_get_one_and_every_field_is_present() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/v1/users",
            &json!({"name": "Anon", "phone_number": "+62123456789"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert!(user["id"].as_str().unwrap().starts_with("usr_"));
    assert!(user["profile_image"].is_null());
    assert_eq!(user["status"], "");
    for field in ["created_at", "updated_at"] {
        assert!(chrono::DateTime::parse_from_rfc3339(user[field].as_str().unwrap()).is_ok());
    }
    let fetched: Value = app
        .get_json(&format!("/v1/users/{}", user["id"].as_str().unwrap()))
        .await;
    assert_eq!(fetched, user);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_with_cursors_in_a_stable_order() {
    let app = TestApp::spawn().await;
    for n in 0..5 {
        app.create_user(&format!("u{n}"), &format!("+6281234567{n}"))
            .await;
    }
    let mut seen = Vec::new();
    let mut path = "/v1/users?limit=2".to_owned();
    loop {
        let page: Value = app.get_json(&path).await;
        let users = page["users"].as_array().unwrap();
        assert!(users.len() <= 2);
        seen.extend(users.iter().map(|u| u["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/users?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["u0", "u1", "u2", "u3", "u4"]);

    let mut ids = HashSet::new();
    for n in 0..3 {
        ids.insert(app.send("u0", &format!("m{n}")).await);
    }
    let first: Value = app.get_json("/v1/users/u0/messages?limit=2").await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let second: Value = app
        .get_json(&format!("/v1/users/u0/messages?limit=2&cursor={cursor}"))
        .await;
    let texts: Vec<_> = first["messages"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["messages"].as_array().unwrap())
        .map(|m| m["message"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(texts, ["m2", "m1", "m0"]);
    assert!(second["next_cursor"].is_null());
}
