//! Templates and WhatsApp's 24-hour window: what the sandbox receives, what
//! it refuses, and what a message and a user show.

use chrono::{Duration as Days, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{PHONE_NUMBER_ID, TestApp};

impl TestApp {
    /// POSTs a send body to `user`; the answer's status and body.
    async fn send_body(&self, user: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .post(&format!("/v1/users/{user}/messages"), &body)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    /// Sends `template` to `user` and expects 202; the message id.
    async fn send_template(&self, user: &str, template: Value) -> String {
        let (status, body) = self.send_body(user, json!({"template": template})).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["message_id"].as_str().unwrap().to_owned()
    }

    /// The user last wrote `ago` before now, as the receipts webhook records it.
    async fn last_wrote(&self, phone: &str, ago: Days) {
        let client = self.pool.get().await.unwrap();
        kurir_store::receipts::record_inbound(
            &client,
            &[kurir_store::receipts::Inbound {
                phone_number_id: PHONE_NUMBER_ID.into(),
                wa_id: Some(phone.trim_start_matches('+').into()),
                user_id: None,
                at: Utc::now() - ago,
            }],
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_template_send_ends_sent_and_whatsapp_gets_the_template() {
    let app = TestApp::spawn().await;
    app.create_user("budi", "+6281234567890").await;
    let template =
        json!({"name": "order_update", "language": "id", "parameters": ["Budi", "#1234"]});
    let id = app.send_template("budi", template.clone()).await;
    let message = app.message_with_status(&id, "sent").await;
    assert_eq!(message["template"], template);
    assert!(message.get("message").is_none(), "{message}");
    let seen = app.sandbox_requests_for(&id);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].message_type.as_deref(), Some("template"));
    assert_eq!(
        seen[0].template,
        Some(json!({
            "name": "order_update",
            "language": {"code": "id"},
            "components": [{"type": "body", "parameters": [
                {"type": "text", "text": "Budi"}, {"type": "text", "text": "#1234"}]}],
        }))
    );
    // A template without variables goes without components.
    let hello = app
        .send_template("budi", json!({"name": "hello_world", "language": "en_US"}))
        .await;
    app.message_with_status(&hello, "sent").await;
    assert_eq!(
        app.sandbox_requests_for(&hello)[0].template,
        Some(json!({"name": "hello_world", "language": {"code": "en_US"}}))
    );
}

#[tokio::test]
async fn metas_components_shape_is_passed_through() {
    let app = TestApp::spawn().await;
    app.create_user("ada", "+6281234567891").await;
    let components = json!([{"type": "body", "parameters": [
        {"type": "text", "text": "Ada"}, {"type": "text", "text": "#99"}]}]);
    let id = app
        .send_template(
            "ada",
            json!({"name": "order_update", "language": "en_US", "components": components}),
        )
        .await;
    let message = app.message_with_status(&id, "sent").await;
    assert_eq!(message["template"]["components"], components);
    assert_eq!(
        app.sandbox_requests_for(&id)[0].template.as_ref().unwrap()["components"],
        components
    );
}

#[tokio::test]
async fn an_unknown_template_fails_with_132001_and_is_not_retried() {
    let app = TestApp::spawn().await;
    app.create_user("t1", "+6281234567892").await;
    let id = app
        .send_template(
            "t1",
            json!({"name": "order_updat", "language": "id", "parameters": ["a", "b"]}),
        )
        .await;
    let message = app.message_with_status(&id, "failed").await;
    assert_eq!(message["last_error"]["code"], "132001");
    assert_eq!(message["last_error"]["retryable"], false);
    assert_eq!(message["attempts"], 1);
    let detail = message["last_error"]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("template order_updat (id) does not exist"),
        "{detail}"
    );
    // A language the template does not have is the same error.
    let id = app
        .send_template("t1", json!({"name": "hello_world", "language": "id"}))
        .await;
    let message = app.message_with_status(&id, "failed").await;
    assert_eq!(message["last_error"]["code"], "132001");
}

#[tokio::test]
async fn a_wrong_parameter_count_fails_with_132000() {
    let app = TestApp::spawn().await;
    app.create_user("t2", "+6281234567893").await;
    let id = app
        .send_template(
            "t2",
            json!({"name": "order_update", "language": "en_US", "parameters": ["only one"]}),
        )
        .await;
    let message = app.message_with_status(&id, "failed").await;
    assert_eq!(message["last_error"]["code"], "132000");
    assert_eq!(message["attempts"], 1);
    let detail = message["last_error"]["detail"].as_str().unwrap();
    assert!(detail.contains("template order_update (en_US)"), "{detail}");
}

#[tokio::test]
async fn outside_the_window_text_fails_with_131047_and_a_template_goes() {
    let app = TestApp::spawn().await;
    let phone = format!("+{}", kurir_sandbox::MAGIC_OUTSIDE_WINDOW);
    app.create_user("away", &phone).await;
    let text = app.send("away", "Halo!").await;
    let message = app.message_with_status(&text, "failed").await;
    assert_eq!(message["last_error"]["code"], "131047");
    assert_eq!(message["attempts"], 1);
    let detail = message["last_error"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("24-hour window") && detail.contains("send this as a template"),
        "{detail}"
    );
    let template = app
        .send_template(
            "away",
            json!({"name": "order_update", "language": "id", "parameters": ["Budi", "#1"]}),
        )
        .await;
    app.message_with_status(&template, "sent").await;
}

#[tokio::test]
async fn message_and_template_together_or_neither_are_422() {
    let app = TestApp::spawn_with(crate::support::Options {
        start_worker: false,
        ..Default::default()
    })
    .await;
    app.create_user("v", "+6281234567894").await;
    let template = json!({"name": "hello_world", "language": "en_US"});
    let cases = [
        (
            json!({"message": "hi", "template": template}),
            vec!["template"],
        ),
        (json!({}), vec!["message"]),
        (json!({"template": "hello_world"}), vec!["template"]),
        (
            json!({"template": {"name": "Hello World", "language": "en-US", "parameters": ["", 5]}}),
            vec![
                "template.name",
                "template.language",
                "template.parameters[0]",
                "template.parameters[1]",
            ],
        ),
        (
            json!({"template": {"name": "a", "language": "id", "components": [{"type": "body", "parameters": [{"type": "text"}]}]}}),
            vec!["template.components[0].parameters[0].text"],
        ),
    ];
    for (body, fields) in cases {
        let (status, problem) = app.send_body("v", body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let named: Vec<&str> = problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(named, fields, "{body}: {problem}");
    }
}

#[tokio::test]
async fn a_batch_of_templates_carries_each_items_parameters() {
    let app = TestApp::spawn().await;
    let mut items = Vec::new();
    for n in 0..5 {
        let user = format!("b{n}");
        app.create_user(&user, &format!("+62812000000{n}")).await;
        items.push(json!({"user_id": user, "template": {
            "name": "order_update", "language": "id", "parameters": [format!("Pelanggan {n}"), format!("#{n}")]}}));
    }
    let response = app
        .post("/v1/messages/batch", &json!({"messages": items}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    for (n, result) in body["results"].as_array().unwrap().iter().enumerate() {
        let id = result["message_id"].as_str().unwrap();
        app.message_with_status(id, "sent").await;
        let seen = app.sandbox_requests_for(id);
        let parameters = &seen[0].template.as_ref().unwrap()["components"][0]["parameters"];
        assert_eq!(parameters[0]["text"], format!("Pelanggan {n}"));
        assert_eq!(parameters[1]["text"], format!("#{n}"));
    }
}

#[tokio::test]
async fn the_window_shows_on_the_user_and_warns_a_text_outside_it() {
    let app = TestApp::spawn_with(crate::support::Options {
        start_worker: false,
        ..Default::default()
    })
    .await;
    app.create_user("fresh", "+6281234500001").await;
    app.create_user("stale", "+6281234500002").await;
    app.create_user("unknown", "+6281234500003").await;
    app.last_wrote("+6281234500001", Days::hours(2)).await;
    app.last_wrote("+6281234500002", Days::hours(30)).await;

    let window = |user: Value| user["window_open_until"].clone();
    let fresh = app.get_json("/v1/users/fresh").await;
    let until = chrono::DateTime::parse_from_rfc3339(window(fresh).as_str().unwrap()).unwrap();
    let left = until.with_timezone(&Utc) - Utc::now();
    assert!(left > Days::hours(21) && left < Days::hours(23), "{left}");
    let stale = app.get_json("/v1/users/stale").await;
    assert!(window(stale).as_str().unwrap() < Utc::now().to_rfc3339().as_str());
    assert!(window(app.get_json("/v1/users/unknown").await).is_null());
    let listed = app.get_json("/v1/users").await;
    assert_eq!(listed["users"].as_array().unwrap().len(), 3);
    assert!(listed["users"][0].get("window_open_until").is_some());

    // A text outside a known-closed window is accepted, with a warning.
    let (status, body) = app.send_body("stale", json!({"message": "Halo!"})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(
        body["warning"]
            .as_str()
            .unwrap()
            .contains("send a template"),
        "{body}"
    );
    for (user, body) in [
        ("fresh", json!({"message": "Halo!"})),
        ("unknown", json!({"message": "Halo!"})),
        (
            "stale",
            json!({"template": {"name": "hello_world", "language": "en_US"}}),
        ),
    ] {
        let (status, answer) = app.send_body(user, body).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(answer.get("warning").is_none(), "{user}: {answer}");
    }
    // In a batch, per item.
    let response = app
        .post(
            "/v1/messages/batch",
            &json!({"messages": [{"user_id": "stale", "message": "a"}, {"user_id": "fresh", "message": "b"}]}),
        )
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert!(body["results"][0]["warning"].is_string(), "{body}");
    assert!(body["results"][1].get("warning").is_none(), "{body}");
}
