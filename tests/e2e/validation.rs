//! Every bad input gets a 4xx problem+json that names the field.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::TestApp;

async fn expect_problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("https://kurir.dev/problems/")
    );
    assert!(body["title"].is_string());
    assert!(body["detail"].is_string());
    body
}

fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_422_naming_the_field() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+62123456789").await;
    for body in [
        json!({"message": ""}),
        json!({"message": "   \n"}),
        json!({"message": "a".repeat(4097)}),
        json!({}),
        json!({"message": null}),
        json!({"message": 42}),
        json!({"message": "nul \u{0} inside"}),
    ] {
        let response = app
            .post("/v1/users/u1/messages", &body)
            .send()
            .await
            .unwrap();
        let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), ["message"], "{body}");
    }
    // 4096 characters, multi-byte ones included, is fine.
    let response = app
        .post(
            "/v1/users/u1/messages",
            &json!({"message": "é".repeat(4096)}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_users_are_422_naming_every_field() {
    let app = TestApp::spawn().await;
    let response = app
        .post(
            "/v1/users",
            &json!({"id": "has space", "name": " ", "phone_number": "62123", "profile_image": "ftp://x/y", "status": "x".repeat(140)}),
        )
        .send()
        .await
        .unwrap();
    let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(
        fields(&problem),
        ["id", "name", "phone_number", "profile_image", "status"]
    );

    let response = app
        .post("/v1/users", &json!({"name": "No Phone"}))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(fields(&problem), ["phone_number"]);

    for phone in ["+62 123 456 789", "0812345678", "+1234567890123456", "+abc"] {
        let response = app
            .post("/v1/users", &json!({"name": "X", "phone_number": phone}))
            .send()
            .await
            .unwrap();
        let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), ["phone_number"], "{phone}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_status_updates_are_422_naming_the_field() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+62123456789").await;
    for body in [
        json!({"status": ""}),
        json!({"status": "x".repeat(140)}),
        json!({}),
        json!({"status": ["a"]}),
    ] {
        let response = app.post("/v1/users/u1/status", &body).send().await.unwrap();
        let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), ["status"], "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_in_a_body_are_422_naming_the_field() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+62123456789").await;
    for (path, body, field) in [
        (
            "/v1/users",
            json!({"name": "Ann", "phone_number": "+62111111111", "email": "ann@example.com"}),
            "email",
        ),
        ("/v1/users/u1/messages", json!({"mesage": "hi"}), "mesage"),
        (
            "/v1/users/u1/messages",
            json!({"message": "hi", "priority": "high"}),
            "priority",
        ),
        (
            "/v1/users/u1/status",
            json!({"status": "away", "until": "noon"}),
            "until",
        ),
    ] {
        let response = app.post(path, &body).send().await.unwrap();
        let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), [field], "{path} {body}");
        let message = problem["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("unknown field `{field}`, expected")),
            "{message}"
        );
    }
    // Nothing was created on the way.
    let users: Value = app.get_json("/v1/users").await;
    assert_eq!(users["users"].as_array().unwrap().len(), 1);
    let messages: Value = app.get_json("/v1/users/u1/messages").await;
    assert_eq!(messages["messages"].as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_wrong_content_type_and_oversize_bodies_are_refused() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+62123456789").await;
    let url = app.url("/v1/users/u1/messages");

    let malformed = app
        .http
        .post(&url)
        .bearer_auth(&app.key)
        .header("content-type", "application/json")
        .body(r#"{"message": "unterminated"#)
        .send()
        .await
        .unwrap();
    expect_problem(malformed, StatusCode::BAD_REQUEST).await;

    let not_json = app
        .http
        .post(&url)
        .bearer_auth(&app.key)
        .header("content-type", "text/plain")
        .body(r#"{"message": "hi"}"#)
        .send()
        .await
        .unwrap();
    expect_problem(not_json, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;

    let no_type = app
        .http
        .post(&url)
        .bearer_auth(&app.key)
        .body("{}")
        .send()
        .await
        .unwrap();
    expect_problem(no_type, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;

    let huge = format!(r#"{{"message": "{}"}}"#, "a".repeat(1024 * 1024 + 1));
    let oversize = app
        .http
        .post(&url)
        .bearer_auth(&app.key)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    expect_problem(oversize, StatusCode::PAYLOAD_TOO_LARGE).await;

    let not_an_object = app
        .post("/v1/users/u1/messages", &json!(["hi"]))
        .send()
        .await
        .unwrap();
    let body = expect_problem(not_an_object, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(fields(&body), ["body"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_are_422_naming_the_parameter() {
    let app = TestApp::spawn().await;
    app.create_user("u1", "+62123456789").await;
    for (path, field) in [
        ("/v1/users?limit=0", "limit"),
        ("/v1/users?limit=1001", "limit"),
        ("/v1/users?limit=ten", "limit"),
        ("/v1/users?cursor=bogus", "cursor"),
        ("/v1/users/u1/messages?status=lost", "status"),
        ("/v1/users/u1/messages?cursor=bogus", "cursor"),
        ("/v1/users?limit=1&limit=2", "limit"),
        ("/v1/users?cursor=a&limit=5&cursor=b", "cursor"),
        ("/v1/users/u1/messages?limit=1&limit=1", "limit"),
        ("/v1/users/u1/messages?limit=2.5", "limit"),
        ("/v1/users?limt=5", "limt"),
        ("/v1/users/u1/messages?staus=failed", "staus"),
    ] {
        let response = app.get(path).send().await.unwrap();
        let problem = expect_problem(response, StatusCode::UNPROCESSABLE_ENTITY).await;
        assert_eq!(fields(&problem), [field], "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_routes_and_methods_are_problems_too() {
    let app = TestApp::spawn().await;
    for path in [
        "/v1/users/nobody",
        "/v1/users/not%20valid",
        "/v1/messages/not-a-uuid",
        "/v1/messages/01a20e9e-6a75-7062-a154-b69d5354176c",
        "/v1/status-updates/01a20e9e-6a75-7062-a154-b69d5354176c",
        "/v1/messages/01a20e9e-6a75-7062-a154-b69d5354176c/attempts",
        "/v1/messages/not-a-uuid/attempts",
        "/v1/status-updates/01a20e9e-6a75-7062-a154-b69d5354176c/attempts",
        "/v1/users/nobody/messages",
        "/v1/nothing-here",
    ] {
        let response = app.get(path).send().await.unwrap();
        expect_problem(response, StatusCode::NOT_FOUND).await;
    }
    let response = app
        .post("/v1/users/nobody/messages", &json!({"message": "hi"}))
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::NOT_FOUND).await;
    let response = app
        .post("/v1/users/nobody/status", &json!({"status": "hi"}))
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::NOT_FOUND).await;
    let response = app
        .http
        .delete(app.url("/v1/users"))
        .bearer_auth(&app.key)
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
}
