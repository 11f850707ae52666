//! Template sends over HTTP: the known templates, Meta's template errors, the
//! outside-the-window recipient, the templates file and what is recorded.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;

use std::path::PathBuf;

use common::*;
use kurir_sandbox::{Config, MAGIC_OUTSIDE_WINDOW, codes};
use serde_json::{Value, json};

/// The brief's example send.
fn order_update_id() -> Value {
    let mut body = template("6281234567890", "order_update", "id", &["Budi", "#1234"]);
    body["biz_opaque_callback_data"] = json!("kurir-msg-7");
    body
}

fn details(answer: &Answer) -> &str {
    answer.json["error"]["error_data"]["details"]
        .as_str()
        .unwrap()
}

#[tokio::test]
async fn template_send_is_accepted_and_recorded_as_received() {
    let sandbox = start(config()).await;
    let body = order_update_id();
    let answer = send_body(&sandbox, body.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(answer.json["contacts"][0]["wa_id"], "6281234567890");
    let wamid = answer.json["messages"][0]["id"].as_str().unwrap();
    assert!(wamid.starts_with("wamid."));

    let reqs = sandbox.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.message_type.as_deref(), Some("template"));
    assert_eq!(r.template.as_ref(), Some(&body["template"]));
    assert_eq!(r.body, None);
    assert_eq!(r.to.as_deref(), Some("6281234567890"));
    assert_eq!(r.biz_opaque_callback_data.as_deref(), Some("kurir-msg-7"));
    assert_eq!(r.wamid.as_deref(), Some(wamid));

    // The HTTP view shows the same, and a text send next to it.
    send(&sandbox, "62123", None).await;
    let url = format!("http://{}/__sandbox/messages", sandbox.addr());
    let listed: Value = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let msgs = listed["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["message_type"], "template");
    assert_eq!(msgs[0]["template"], body["template"]);
    assert_eq!(msgs[1]["message_type"], "text");
    assert!(msgs[1]["template"].is_null());
    assert_eq!(msgs[1]["body"], "Halo");
}

#[tokio::test]
async fn hello_world_needs_no_components() {
    let sandbox = start(config()).await;
    let without = template("62123", "hello_world", "en_US", &[]);
    assert_eq!(send_body(&sandbox, without).await.status, 200);
    let mut empty = template("62123", "hello_world", "en_US", &[]);
    empty["template"]["components"] = json!([]);
    assert_eq!(send_body(&sandbox, empty).await.status, 200);
    let answer = send_body(&sandbox, template("62123", "hello_world", "en_US", &["x"])).await;
    assert_meta_error(&answer, 400, codes::TEMPLATE_PARAM_COUNT_MISMATCH.into());
}

#[tokio::test]
async fn header_and_button_parameters_are_not_counted() {
    let sandbox = start(config()).await;
    let mut body = order_update_id();
    let components = body["template"]["components"].as_array_mut().unwrap();
    components.insert(
        0,
        json!({"type":"header","parameters":[{"type":"text","text":"Pesanan"}]}),
    );
    components.push(json!({"type":"button","sub_type":"url","index":"0",
                           "parameters":[{"type":"text","text":"1234"}]}));
    components.push(json!({"type":"button","sub_type":"quick_reply","index":"1",
                           "parameters":[{"type":"payload","payload":"STOP"}]}));
    let answer = send_body(&sandbox, body).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
}

#[tokio::test]
async fn unknown_template_name_or_language_is_132001() {
    let sandbox = start(config()).await;
    let mut misspelt = order_update_id();
    misspelt["template"]["name"] = json!("order_updat");
    let answer = send_body(&sandbox, misspelt).await;
    assert_meta_error(&answer, 400, codes::TEMPLATE_NOT_FOUND.into());
    assert_eq!(
        answer.json["error"]["message"],
        "(#132001) Template name does not exist in the translation"
    );
    assert_eq!(
        details(&answer),
        "template name (order_updat) does not exist in id"
    );

    let answer = send_body(&sandbox, template("62123", "hello_world", "id", &[])).await;
    assert_meta_error(&answer, 400, 132_001);
    assert_eq!(
        details(&answer),
        "template name (hello_world) does not exist in id"
    );
    let reqs = sandbox.requests();
    assert!(
        reqs.iter()
            .all(|r| r.error_code == Some(132_001) && r.wamid.is_none())
    );
    assert_eq!(reqs[1].template.as_ref().unwrap()["language"]["code"], "id");
}

#[tokio::test]
async fn wrong_body_parameter_count_is_132000() {
    let sandbox = start(config()).await;
    for params in [&["Budi"][..], &[], &["a", "b", "c"]] {
        let answer = send_body(&sandbox, template("62123", "order_update", "en_US", params)).await;
        assert_meta_error(&answer, 400, codes::TEMPLATE_PARAM_COUNT_MISMATCH.into());
        assert_eq!(
            answer.json["error"]["message"],
            "(#132000) Number of parameters does not match the expected number of params"
        );
        assert_eq!(
            details(&answer),
            format!(
                "body: number of localizable_params ({}) does not match the expected number of params (2)",
                params.len()
            )
        );
    }
}

#[tokio::test]
async fn malformed_template_is_100_and_still_recorded() {
    let sandbox = start(config()).await;
    let mut bodies = Vec::new();
    for template_value in [
        json!({"language": {"code": "id"}}),
        json!({"name": "order_update", "language": {}}),
        json!({"name": "order_update", "language": {"code": "id"},
               "components": [{"type": "body", "parameters": ["Budi", "#1234"]}]}),
        json!({"name": "order_update", "language": {"code": "id"},
               "components": [{"type": "body", "parameters": [{"text": "Budi"}, {"text": "#1"}]}]}),
    ] {
        let mut body = order_update_id();
        body["template"] = template_value;
        bodies.push(body.clone());
        assert_meta_error(&send_body(&sandbox, body).await, 400, 100);
    }
    let mut missing = order_update_id();
    missing.as_object_mut().unwrap().remove("template");
    assert_meta_error(&send_body(&sandbox, missing).await, 400, 100);

    let reqs = sandbox.requests();
    assert_eq!(reqs.len(), 5);
    for (r, body) in reqs.iter().zip(&bodies) {
        assert_eq!(r.error_code, Some(100));
        assert_eq!(r.message_type.as_deref(), Some("template"));
        assert_eq!(r.template.as_ref(), Some(&body["template"]));
    }
    assert_eq!(reqs[4].template, None);
}

#[tokio::test]
async fn outside_window_recipient_refuses_text_but_takes_templates() {
    let sandbox = start(config()).await;
    assert_eq!(MAGIC_OUTSIDE_WINDOW, "15550000003");
    for to in ["+15550000003", "15550000003"] {
        let answer = send(&sandbox, to, Some("cb-window")).await;
        assert_meta_error(&answer, 400, codes::REENGAGEMENT.into());
        assert_eq!(
            answer.json["error"]["message"],
            "(#131047) Re-engagement message"
        );
        assert_eq!(
            details(&answer),
            "Message failed to send because more than 24 hours have passed since the customer last replied to this number."
        );
        let answer = send_body(
            &sandbox,
            template(to, "order_update", "id", &["Budi", "#1"]),
        )
        .await;
        assert_eq!(answer.status, 200, "{}", answer.json);
    }
    let codes: Vec<Option<u32>> = sandbox.requests().iter().map(|r| r.error_code).collect();
    assert_eq!(codes, [Some(131_047), None, Some(131_047), None]);
}

/// A templates file in the temp dir, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "kurir-sandbox-it-{}-{name}.json",
            std::process::id()
        ));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
async fn templates_file_adds_templates() {
    let file = TempFile::new(
        "good",
        r#"[{"name":"otp","languages":["en_US","id"],"body_parameters":1}]"#,
    );
    let sandbox = start(Config {
        templates: Some(file.0.clone()),
        ..config()
    })
    .await;
    for language in ["en_US", "id"] {
        let answer = send_body(&sandbox, template("62123", "otp", language, &["123456"])).await;
        assert_eq!(answer.status, 200, "{}", answer.json);
    }
    assert_meta_error(
        &send_body(&sandbox, template("62123", "otp", "id", &[])).await,
        400,
        132_000,
    );
    assert_meta_error(
        &send_body(&sandbox, template("62123", "otp", "pt_BR", &["1"])).await,
        400,
        132_001,
    );
    let builtin = send_body(&sandbox, template("62123", "hello_world", "en_US", &[])).await;
    assert_eq!(builtin.status, 200, "built-in templates are kept");
}

#[tokio::test]
async fn start_refuses_an_unusable_templates_file() {
    let broken = TempFile::new("broken", r#"[{"name":"otp","languages":"id"}]"#);
    let missing = std::env::temp_dir().join("kurir-sandbox-it-no-such-file.json");
    for path in [broken.0.clone(), missing] {
        let err = kurir_sandbox::start(Config {
            templates: Some(path.clone()),
            ..config()
        })
        .await
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        let message = err.to_string();
        assert!(
            message.starts_with("KURIR_SANDBOX_TEMPLATES: "),
            "{message}"
        );
        assert!(message.contains(&path.display().to_string()), "{message}");
    }
}
