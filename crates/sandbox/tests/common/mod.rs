//! Helpers shared by the sandbox integration tests.
#![allow(dead_code)]

use std::time::Duration;

use kurir_sandbox::{Config, Sandbox};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

pub const PHONE_ID: &str = "1234567890";
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn config() -> Config {
    Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    }
}

pub async fn start(config: Config) -> Sandbox {
    kurir_sandbox::start(config).await.expect("sandbox starts")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .unwrap()
}

pub fn text(to: &str, body: &str, callback: Option<&str>) -> Value {
    let mut v = json!({
        "messaging_product": "whatsapp",
        "to": to,
        "type": "text",
        "text": { "body": body },
    });
    if let Some(cb) = callback {
        v["biz_opaque_callback_data"] = json!(cb);
    }
    v
}

/// A template send as kurir's whatsapp provider builds it: `body_params`
/// become the body component's text parameters (no component when empty).
pub fn template(to: &str, name: &str, language: &str, body_params: &[&str]) -> Value {
    let mut template = json!({ "name": name, "language": { "code": language } });
    if !body_params.is_empty() {
        let parameters: Vec<Value> = body_params
            .iter()
            .map(|p| json!({ "type": "text", "text": p }))
            .collect();
        template["components"] = json!([{ "type": "body", "parameters": parameters }]);
    }
    json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to,
        "type": "template",
        "template": template,
    })
}

/// POSTs a send body through `sandbox` (versioned path, bearer "test").
pub async fn send_body(sandbox: &Sandbox, body: Value) -> Answer {
    let url = format!("{}/{PHONE_ID}/messages", sandbox.base_url());
    post(&url, Some("test"), body).await
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub json: Value,
}

/// POSTs `body` (JSON value or raw string) to `url` with an optional bearer token.
pub async fn post(url: &str, bearer: Option<&str>, body: impl Into<RawOrJson>) -> Answer {
    let mut req = client()
        .post(url)
        .header("content-type", "application/json");
    if let Some(token) = bearer {
        req = req.bearer_auth(token);
    }
    let bytes = match body.into() {
        RawOrJson::Raw(s) => s.into_bytes(),
        RawOrJson::Json(v) => serde_json::to_vec(&v).unwrap(),
    };
    let resp = req.body(bytes).send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        json,
    }
}

pub enum RawOrJson {
    Raw(String),
    Json(Value),
}

impl From<Value> for RawOrJson {
    fn from(v: Value) -> Self {
        RawOrJson::Json(v)
    }
}

impl From<&str> for RawOrJson {
    fn from(s: &str) -> Self {
        RawOrJson::Raw(s.to_owned())
    }
}

/// Sends a text message through `sandbox` (versioned path, bearer "test").
pub async fn send(sandbox: &Sandbox, to: &str, callback: Option<&str>) -> Answer {
    let url = format!("{}/{PHONE_ID}/messages", sandbox.base_url());
    post(&url, Some("test"), text(to, "Halo", callback)).await
}

/// Asserts a Meta error answer and returns it.
pub fn assert_meta_error(answer: &Answer, status: u16, code: u64) {
    assert_eq!(answer.status.as_u16(), status, "{}", answer.json);
    let err = &answer.json["error"];
    assert_eq!(err["code"].as_u64(), Some(code), "{}", answer.json);
    assert_eq!(err["type"], "OAuthException");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("(#{code}) "))
    );
    assert_eq!(err["error_data"]["messaging_product"], "whatsapp");
    assert!(err["error_data"]["details"].is_string());
    assert!(!err["fbtrace_id"].as_str().unwrap().is_empty());
}
