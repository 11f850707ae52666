//! The `webhook` provider: a JSON event POSTed to one URL, signed per the
//! Standard Webhooks spec (<https://www.standardwebhooks.com/>).
//!
//! Headers: `webhook-id` (the message or status update id, the same on every
//! retry so the receiver can drop duplicates), `webhook-timestamp` (unix
//! seconds) and `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `{id}.{timestamp}.{body}`.
//!
//! Over 500 lines because of its tests (the larger half): the signature
//! against the spec's example, and each kind of answer against a local server.

use std::fmt;

use async_trait::async_trait;
use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig, general_purpose::STANDARD},
};
use hmac::{Hmac, Mac};
use kurir_core::{
    MessageBody, MessageId, PhoneNumber, StatusText, StatusUpdateId, Template, UserId,
};
use reqwest::{Client, Url, header::CONTENT_TYPE};
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;

use super::{
    ClaimedMessage, ClaimedStatusUpdate, Outcome, Provider, ProviderError,
    http::{self, Answer},
};
use crate::config::ProviderArgs;

/// Standard Webhooks secrets: `whsec_` then base64 of the key bytes.
const SECRET_PREFIX: &str = "whsec_";

/// Standard base64, with or without its padding.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// POSTs signed events to `KURIR_WEBHOOK_URL`.
pub struct WebhookProvider {
    client: Client,
    url: Url,
    /// The HMAC key; never printed.
    key: Vec<u8>,
}

impl fmt::Debug for WebhookProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a credential in its query: show only where it goes.
        f.debug_struct("WebhookProvider")
            .field("host", &self.url.host_str())
            .field("path", &self.url.path())
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The event for a message.
#[derive(Debug, Serialize)]
struct MessageEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message_id: MessageId,
    user_id: &'a UserId,
    to: &'a PhoneNumber,
    /// A text message's text.
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a MessageBody>,
    /// A template message's template, as the client sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<serde_json::Value>,
    attempt: i32,
}

/// The event for a status update.
#[derive(Debug, Serialize)]
struct StatusEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    status_update_id: StatusUpdateId,
    user_id: &'a UserId,
    phone_number: &'a PhoneNumber,
    status: &'a StatusText,
    attempt: i32,
}

impl WebhookProvider {
    /// Builds the provider from `KURIR_WEBHOOK_*`; errors name the setting at
    /// fault and never echo the secret.
    pub fn from_args(args: &ProviderArgs) -> Result<Self, String> {
        let raw_url = args
            .webhook_url
            .as_deref()
            .ok_or("KURIR_PROVIDER=webhook needs KURIR_WEBHOOK_URL")?;
        let url = Url::parse(raw_url)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or("KURIR_WEBHOOK_URL must be an http(s) URL")?;
        let secret = args
            .webhook_secret
            .as_deref()
            .filter(|secret| !secret.is_empty())
            .ok_or("KURIR_PROVIDER=webhook needs KURIR_WEBHOOK_SECRET")?;
        Ok(Self {
            client: http::client(args.provider_timeout)?,
            url,
            key: signing_key(secret)?,
        })
    }

    /// Signs and POSTs one event.
    async fn deliver(&self, id: &str, event: &impl Serialize) -> Outcome {
        let body = match serde_json::to_vec(event) {
            Ok(body) => body,
            Err(err) => {
                // Cannot happen with these types; never retry it if it does.
                return Outcome::Permanent {
                    error: ProviderError::new("encode", err.to_string(), None),
                };
            }
        };
        let timestamp = chrono::Utc::now().timestamp();
        let signature = sign(&self.key, id, timestamp, &body);

        let sent = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(err) => return http::transport_outcome(&err),
        };
        let (answer, failure) = Answer::read(response).await;
        if let Some(err) = failure {
            tracing::warn!(
                provider = "webhook",
                webhook_id = id,
                http_status = answer.status.as_u16(),
                error = %http::error_text(&err),
                "could not read the whole answer"
            );
        }

        let status = answer.status;
        if status.is_success() {
            return Outcome::Delivered {
                provider_message_id: answer_id(&answer.body),
                http_status: Some(status.as_u16()),
            };
        }
        // 3xx (redirects are not followed), 4xx and 5xx.
        answer.status_outcome(ProviderError::new(
            http::status_code(status),
            answer.detail(),
            Some(status.as_u16()),
        ))
    }
}

#[async_trait]
impl Provider for WebhookProvider {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn send_message(&self, message: &ClaimedMessage) -> Outcome {
        let event = MessageEvent {
            kind: "message.send",
            message_id: message.id,
            user_id: &message.user_id,
            to: &message.to,
            message: message.content.text(),
            template: message.content.template().map(Template::to_json),
            attempt: message.attempt,
        };
        self.deliver(&message.id.to_string(), &event).await
    }

    async fn update_status(&self, update: &ClaimedStatusUpdate) -> Outcome {
        let event = StatusEvent {
            kind: "status.update",
            status_update_id: update.id,
            user_id: &update.user_id,
            phone_number: &update.phone_number,
            status: &update.status,
            attempt: update.attempt,
        };
        self.deliver(&update.id.to_string(), &event).await
    }
}

/// The HMAC key of a secret: base64-decoded after `whsec_`, else the raw bytes.
fn signing_key(secret: &str) -> Result<Vec<u8>, String> {
    let Some(encoded) = secret.strip_prefix(SECRET_PREFIX) else {
        return Ok(secret.as_bytes().to_vec());
    };
    let key = LENIENT_BASE64
        .decode(encoded.trim())
        .map_err(|_| "KURIR_WEBHOOK_SECRET: the part after whsec_ must be base64".to_owned())?;
    if key.is_empty() {
        return Err("KURIR_WEBHOOK_SECRET: the key after whsec_ is empty".into());
    }
    Ok(key)
}

/// `v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts a key of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC takes keys of any length")
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The receiver's own id for the event: a JSON answer's string `"id"`, if any.
fn answer_id(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value
        .get("id")?
        .as_str()
        .filter(|id| !id.is_empty())
        .map(|id| http::truncate(id, 256))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::config::ProviderKind;
    use crate::provider::test_support::{
        Captured, Reply, TestServer, args, message, refused_url, status,
    };

    /// From the Standard Webhooks spec's examples.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn provider(url: &str, secret: &str) -> WebhookProvider {
        let mut args = args(ProviderKind::Webhook);
        args.webhook_url = Some(url.to_owned());
        args.webhook_secret = Some(secret.to_owned());
        WebhookProvider::from_args(&args).expect("provider")
    }

    /// Recomputes the signature of a captured request with `key`, independently.
    fn assert_signed(request: &Captured, key: &[u8]) {
        let id = request.header("webhook-id").expect("webhook-id");
        let timestamp = request
            .header("webhook-timestamp")
            .expect("webhook-timestamp");
        let now = chrono::Utc::now().timestamp();
        let sent: i64 = timestamp.parse().expect("unix seconds");
        assert!((now - sent).abs() < 60, "timestamp {sent} vs now {now}");

        let mut signed = format!("{id}.{timestamp}.").into_bytes();
        signed.extend_from_slice(&request.body);
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("key");
        mac.update(&signed);
        let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(request.header("webhook-signature"), Some(expected.as_str()));
    }

    async fn answer(reply: Reply) -> Outcome {
        let server = TestServer::start(reply).await;
        provider(&server.url(), SECRET)
            .send_message(&message())
            .await
    }

    #[tokio::test]
    async fn posts_a_signed_message_event() {
        let mut server = TestServer::start(Reply::json(202, json!({"id": "evt_42"}))).await;
        let provider = provider(&format!("{}/hooks/kurir?x=1", server.url()), SECRET);
        let mut message = message();
        message.attempt = 3;

        let outcome = provider.send_message(&message).await;

        assert_eq!(
            outcome,
            Outcome::Delivered {
                provider_message_id: Some("evt_42".to_owned()),
                http_status: Some(202),
            }
        );
        let request = server.request().await;
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hooks/kurir?x=1");
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(
            request.header("webhook-id"),
            Some(message.id.to_string().as_str())
        );
        let key = STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .expect("base64");
        assert_signed(&request, &key);
        assert_eq!(
            request.json(),
            json!({
                "type": "message.send",
                "message_id": message.id.to_string(),
                "user_id": "usr_1",
                "to": "+6281234567890",
                "message": message.content.text().unwrap().as_str(),
                "attempt": 3,
            })
        );
    }

    #[tokio::test]
    async fn a_template_message_is_sent_as_given() {
        let mut server = TestServer::start(Reply::new(200, "")).await;
        let provider = provider(&server.url(), "plain secret");
        let template =
            json!({"name": "order_update", "language": "id", "parameters": ["Budi", "#1"]});
        let message = ClaimedMessage {
            content: kurir_core::Content::Template(
                kurir_core::Template::parse("template", &template).expect("template"),
            ),
            ..message()
        };
        assert!(matches!(
            provider.send_message(&message).await,
            Outcome::Delivered { .. }
        ));
        let event = server.request().await.json();
        assert_eq!(event["type"], "message.send");
        assert_eq!(event["template"], template);
        assert!(event.get("message").is_none(), "{event}");
    }

    #[tokio::test]
    async fn posts_a_signed_status_event_with_a_raw_secret() {
        let mut server = TestServer::start(Reply::new(204, "")).await;
        let provider = provider(&server.url(), "plain secret");
        let update = status();

        assert_eq!(
            provider.update_status(&update).await,
            Outcome::Delivered {
                provider_message_id: None,
                http_status: Some(204),
            }
        );
        let request = server.request().await;
        assert_eq!(
            request.header("webhook-id"),
            Some(update.id.to_string().as_str())
        );
        assert_signed(&request, b"plain secret");
        assert_eq!(
            request.json(),
            json!({
                "type": "status.update",
                "status_update_id": update.id.to_string(),
                "user_id": "usr_1",
                "phone_number": "+6281234567890",
                "status": "Sedang sibuk dalam rapat.",
                "attempt": 2,
            })
        );
    }

    #[tokio::test]
    async fn webhook_id_is_stable_across_retries() {
        let mut server = TestServer::start(Reply::new(500, "")).await;
        let provider = provider(&server.url(), SECRET);
        let mut message = message();
        provider.send_message(&message).await;
        message.attempt = 2;
        provider.send_message(&message).await;
        let first = server.request().await;
        let second = server.request().await;
        assert_eq!(first.header("webhook-id"), second.header("webhook-id"));
        assert_eq!(second.json()["attempt"], 2);
    }

    #[test]
    fn signature_matches_the_spec_example() {
        // Standard Webhooks reference test vector.
        let key = signing_key(SECRET).expect("key");
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets() {
        assert_eq!(signing_key("raw").expect("raw"), b"raw");
        assert_eq!(signing_key("whsec_AAEC").expect("padded"), [0, 1, 2]);
        assert_eq!(signing_key("whsec_AAE=").expect("padded"), [0, 1]);
        assert_eq!(signing_key("whsec_AAE").expect("unpadded"), [0, 1]);
        assert!(signing_key("whsec_!!not base64!!").is_err());
        assert!(signing_key("whsec_").is_err());

        let mut settings = args(ProviderKind::Webhook);
        settings.webhook_url = Some("https://example.com/hook".to_owned());
        settings.webhook_secret = Some("whsec_%%%".to_owned());
        let err = WebhookProvider::from_args(&settings).expect_err("bad secret");
        assert!(
            err.contains("KURIR_WEBHOOK_SECRET") && !err.contains("%%%"),
            "{err}"
        );
        settings.webhook_secret = None;
        assert!(WebhookProvider::from_args(&settings).is_err());
        settings.webhook_secret = Some("s".to_owned());
        settings.webhook_url = Some("ftp://example.com".to_owned());
        assert!(WebhookProvider::from_args(&settings).is_err());
        settings.webhook_url = Some("https://example.com/hook?token=abc".to_owned());
        let provider = WebhookProvider::from_args(&settings).expect("provider");
        assert_eq!(provider.name(), "webhook");
        let debug = format!("{provider:?}");
        assert!(
            !debug.contains("abc") && !debug.contains("\"s\""),
            "{debug}"
        );
    }

    #[tokio::test]
    async fn success_answers() {
        assert_eq!(
            answer(Reply::new(200, "ok")).await,
            Outcome::Delivered {
                provider_message_id: None,
                http_status: Some(200),
            }
        );
        assert_eq!(
            answer(Reply::json(200, json!({"id": 7}))).await,
            Outcome::Delivered {
                provider_message_id: None,
                http_status: Some(200),
            }
        );
    }

    #[tokio::test]
    async fn rate_limited_is_retryable_with_retry_after() {
        assert_eq!(
            answer(Reply::new(429, "").header("retry-after", "42")).await,
            Outcome::Retryable {
                error: ProviderError::new("http_429", "Too Many Requests", Some(429)),
                retry_after: Some(Duration::from_secs(42)),
            }
        );
    }

    #[tokio::test]
    async fn server_error_is_retryable() {
        assert_eq!(
            answer(Reply::new(500, "boom")).await,
            Outcome::Retryable {
                error: ProviderError::new("http_500", "boom", Some(500)),
                retry_after: None,
            }
        );
    }

    #[tokio::test]
    async fn client_error_is_permanent() {
        assert_eq!(
            answer(Reply::new(400, "bad signature")).await,
            Outcome::Permanent {
                error: ProviderError::new("http_400", "bad signature", Some(400)),
            }
        );
        let outcome = answer(Reply::new(410, "y".repeat(800))).await;
        let Outcome::Permanent { error } = outcome else {
            panic!("expected permanent, got {outcome:?}");
        };
        assert_eq!(error.detail.chars().count(), 500);
    }

    #[tokio::test]
    async fn redirect_is_not_followed_and_is_permanent() {
        let mut target = TestServer::start(Reply::new(200, "")).await;
        let mut server = TestServer::start(
            Reply::new(307, "").header("location", &format!("{}/elsewhere", target.url())),
        )
        .await;
        let outcome = provider(&server.url(), SECRET)
            .send_message(&message())
            .await;
        assert_eq!(
            outcome,
            Outcome::Permanent {
                error: ProviderError::new("http_307", "Temporary Redirect", Some(307)),
            }
        );
        server.request().await;
        // Nothing reached the redirect's target.
        assert!(target.try_request().is_none());
    }

    #[tokio::test]
    async fn timeout_is_retryable() {
        let mut server = TestServer::silent().await;
        let mut settings = args(ProviderKind::Webhook);
        settings.provider_timeout = Duration::from_millis(200);
        settings.webhook_url = Some(format!("{}/hook?token=hunter2", server.url()));
        settings.webhook_secret = Some(SECRET.to_owned());
        let provider = WebhookProvider::from_args(&settings).expect("provider");

        let outcome = provider.send_message(&message()).await;

        let Outcome::Retryable { error, .. } = outcome else {
            panic!("expected retryable, got {outcome:?}");
        };
        assert_eq!(error.code, "timeout");
        assert!(!error.detail.contains("hunter2"), "{}", error.detail);
        server.request().await;
    }

    #[tokio::test]
    async fn connection_refused_is_retryable() {
        let outcome = provider(&refused_url().await, SECRET)
            .send_message(&message())
            .await;
        let Outcome::Retryable { error, retry_after } = outcome else {
            panic!("expected retryable, got {outcome:?}");
        };
        assert_eq!(error.code, "connect");
        assert_eq!(retry_after, None);
    }
}
