//! The `whatsapp` provider: the WhatsApp Cloud API (Meta's Graph API), or
//! kurir-sandbox, which speaks it.
//!
//! A message is a `text` message to the recipient. A status update sets the
//! sending business profile's "about" text: WhatsApp has no per-recipient status.
//!
//! Over 500 lines because of its tests (the second half): each of Meta's
//! answers against a local HTTP server, kept next to the code that reads them.

use std::fmt;

use async_trait::async_trait;
use reqwest::{
    Client, Url,
    header::{AUTHORIZATION, HeaderValue},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ClaimedMessage, ClaimedStatusUpdate, Outcome, Provider, ProviderError,
    http::{self, Answer, MAX_DETAIL_CHARS},
    meta_errors::{self, MUCH_LATER, Treatment},
};
use crate::config::ProviderArgs;
use kurir_core::Content;

/// Sends through the WhatsApp Cloud API with one shared HTTP client.
pub struct WhatsAppProvider {
    client: Client,
    /// `Bearer <token>`, marked sensitive so it is never printed.
    authorization: HeaderValue,
    /// The sending number's id, which receipts name.
    phone_number_id: String,
    /// `{base}/{phone_number_id}/messages`
    messages_url: Url,
    /// `{base}/{phone_number_id}/whatsapp_business_profile`
    profile_url: Url,
}

impl fmt::Debug for WhatsAppProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WhatsAppProvider")
            .field("messages_url", &self.messages_url.as_str())
            .field("profile_url", &self.profile_url.as_str())
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl WhatsAppProvider {
    /// Builds the provider from `KURIR_WHATSAPP_*`; errors name the setting at fault.
    pub fn from_args(args: &ProviderArgs) -> Result<Self, String> {
        let token = args
            .whatsapp_token
            .as_deref()
            .filter(|token| !token.is_empty())
            .ok_or("KURIR_PROVIDER=whatsapp needs KURIR_WHATSAPP_TOKEN")?;
        let phone_number_id = args
            .whatsapp_phone_number_id
            .as_deref()
            .filter(|id| !id.is_empty())
            .ok_or("KURIR_PROVIDER=whatsapp needs KURIR_WHATSAPP_PHONE_NUMBER_ID")?;

        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                "KURIR_WHATSAPP_TOKEN contains characters not allowed in an HTTP header".to_owned()
            })?;
        authorization.set_sensitive(true);

        let base = args.whatsapp_base_url.trim_end_matches('/');
        let endpoint = |leaf: &str| -> Result<Url, String> {
            let bad = || format!("KURIR_WHATSAPP_BASE_URL must be an http(s) URL, got {base:?}");
            let mut url = Url::parse(base).map_err(|_| bad())?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(bad());
            }
            url.path_segments_mut()
                .map_err(|()| bad())?
                .pop_if_empty()
                .push(phone_number_id)
                .push(leaf);
            Ok(url)
        };

        Ok(Self {
            client: http::client(args.provider_timeout)?,
            phone_number_id: phone_number_id.to_owned(),
            authorization,
            messages_url: endpoint("messages")?,
            profile_url: endpoint("whatsapp_business_profile")?,
        })
    }

    /// POSTs `payload` to `url`: the answer, or the outcome of a call that got none.
    async fn post(&self, url: &Url, payload: &Value) -> Result<Answer, Outcome> {
        let response = self
            .client
            .post(url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .json(payload)
            .send()
            .await
            .map_err(|err| http::transport_outcome(&err))?;
        let (answer, failure) = Answer::read(response).await;
        if let Some(err) = failure {
            tracing::warn!(
                provider = "whatsapp",
                http_status = answer.status.as_u16(),
                error = %http::error_text(&err),
                "could not read the whole answer"
            );
        }
        Ok(answer)
    }
}

#[async_trait]
impl Provider for WhatsAppProvider {
    fn name(&self) -> &'static str {
        "whatsapp"
    }

    fn sender(&self) -> Option<&str> {
        Some(&self.phone_number_id)
    }

    async fn send_message(&self, message: &ClaimedMessage) -> Outcome {
        let mut payload = json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.to.digits(),
            "biz_opaque_callback_data": message.id.to_string(),
        });
        match &message.content {
            Content::Text(body) => {
                payload["type"] = json!("text");
                payload["text"] = json!({"preview_url": false, "body": body.as_str()});
            }
            Content::Template(template) => {
                let mut object = json!({
                    "name": template.name,
                    "language": {"code": template.language},
                });
                let components = template.components();
                if !components.is_empty() {
                    object["components"] = Value::Array(components);
                }
                payload["type"] = json!("template");
                payload["template"] = object;
            }
        }
        let answer = match self.post(&self.messages_url, &payload).await {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        if !answer.status.is_success() {
            return classify_error(&answer, Some(&message.content));
        }
        let provider_message_id = wamid(&answer.body);
        if provider_message_id.is_none() {
            tracing::warn!(
                provider = "whatsapp",
                message_id = %message.id,
                http_status = answer.status.as_u16(),
                "WhatsApp accepted the message but its answer names no message id"
            );
        }
        Outcome::Delivered {
            provider_message_id,
            http_status: Some(answer.status.as_u16()),
        }
    }

    async fn update_status(&self, update: &ClaimedStatusUpdate) -> Outcome {
        let payload = json!({
            "messaging_product": "whatsapp",
            "about": update.status.as_str(),
        });
        let answer = match self.post(&self.profile_url, &payload).await {
            Ok(answer) => answer,
            Err(outcome) => return outcome,
        };
        if !answer.status.is_success() {
            return classify_error(&answer, None);
        }
        Outcome::Delivered {
            provider_message_id: None,
            http_status: Some(answer.status.as_u16()),
        }
    }
}

/// The `wamid…` of a success answer `{"messages":[{"id":"wamid…"}]}`.
fn wamid(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value
        .get("messages")?
        .get(0)?
        .get("id")?
        .as_str()
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

/// Meta's error answer: `{"error":{"message":…,"code":131026,"error_data":{"details":…},…}}`.
#[derive(Debug, Deserialize)]
struct MetaErrorBody {
    error: MetaError,
}

#[derive(Debug, Deserialize)]
struct MetaError {
    #[serde(default)]
    message: Option<String>,
    /// A number, though be lenient about a numeric string.
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    error_subcode: Option<Value>,
    /// Usually `{"details": …}`; tolerate anything.
    #[serde(default)]
    error_data: Option<Value>,
    #[serde(default)]
    fbtrace_id: Option<String>,
}

impl MetaError {
    fn code(&self) -> Option<i64> {
        match self.code.as_ref()? {
            Value::Number(number) => number.as_i64(),
            Value::String(text) => text.trim().parse().ok(),
            _ => None,
        }
    }

    /// `message — details`, either alone if the other is missing.
    fn detail(&self) -> Option<String> {
        let message = self
            .message
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty());
        let details = self
            .error_data
            .as_ref()
            .and_then(|data| data.get("details"))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|d| !d.is_empty());
        match (message, details) {
            (Some(message), Some(details)) => Some(format!("{message} — {details}")),
            (Some(text), None) | (None, Some(text)) => Some(text.to_owned()),
            (None, None) => None,
        }
    }
}

/// Classifies a non-2xx answer: by Meta's error code where the table
/// ([`meta_errors`]) names it, else by the HTTP status (429 and 5xx
/// retryable, other 4xx permanent). `content`: what was sent, for advice
/// that names it (`None` for a status update).
fn classify_error(answer: &Answer, content: Option<&Content>) -> Outcome {
    let status = answer.status;
    let meta = serde_json::from_slice::<MetaErrorBody>(&answer.body)
        .ok()
        .map(|body| body.error);
    let code = meta.as_ref().and_then(MetaError::code);
    let detail = meta
        .as_ref()
        .and_then(MetaError::detail)
        .unwrap_or_else(|| answer.detail());
    // What to do first: a long answer from Meta is what gets cut.
    let detail = match code.and_then(|code| meta_errors::advice(code, content)) {
        Some(advice) => format!("{advice}. WhatsApp said: {detail}"),
        None => detail,
    };
    let detail = http::truncate(&detail, MAX_DETAIL_CHARS);

    if let Some(meta) = &meta {
        tracing::debug!(
            provider = "whatsapp",
            http_status = status.as_u16(),
            code = ?code,
            error_subcode = ?meta.error_subcode,
            fbtrace_id = meta.fbtrace_id.as_deref().unwrap_or(""),
            "WhatsApp answered with an error"
        );
    }

    let error = ProviderError::new(
        code.map_or_else(|| http::status_code(status), |code| code.to_string()),
        detail,
        Some(status.as_u16()),
    );
    match code.and_then(meta_errors::treatment) {
        Some(Treatment::Retry) => Outcome::Retryable {
            error,
            retry_after: answer.retry_after(),
        },
        Some(Treatment::RetryMuchLater) => Outcome::Retryable {
            error,
            retry_after: Some(
                answer
                    .retry_after()
                    .map_or(MUCH_LATER, |after| after.max(MUCH_LATER)),
            ),
        },
        Some(Treatment::PermanentForMessage | Treatment::PermanentForRecipient) => {
            Outcome::Permanent { error }
        }
        Some(Treatment::StopTheSender) => {
            // An operator alert: every message from this sender fails the
            // same way until someone fixes the account.
            tracing::error!(
                provider = "whatsapp",
                code = %error.code,
                detail = %error.detail,
                "WhatsApp refused the sending account; fix it (messages fail until then)"
            );
            Outcome::Permanent { error }
        }
        None => answer.status_outcome(error),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::ProviderKind;
    use crate::provider::test_support::{Reply, TestServer, args, message, refused_url, status};

    const TOKEN: &str = "EAAG-secret-token";

    fn provider(base_url: &str) -> WhatsAppProvider {
        let mut args = args(ProviderKind::Whatsapp);
        args.whatsapp_base_url = base_url.to_owned();
        args.whatsapp_token = Some(TOKEN.to_owned());
        args.whatsapp_phone_number_id = Some("1065".to_owned());
        WhatsAppProvider::from_args(&args).expect("provider")
    }

    fn meta_error(code: i64, details: Option<&str>) -> Value {
        let mut error = json!({
            "message": "(#131026) Message undeliverable",
            "type": "OAuthException",
            "code": code,
            "error_subcode": 2494010,
            "fbtrace_id": "AbCdEf",
        });
        if let Some(details) = details {
            error["error_data"] = json!({"messaging_product": "whatsapp", "details": details});
        }
        json!({ "error": error })
    }

    async fn answer(reply: Reply) -> Outcome {
        let server = TestServer::start(reply).await;
        provider(&server.url()).send_message(&message()).await
    }

    #[tokio::test]
    async fn sends_a_text_message() {
        let mut server = TestServer::start(Reply::json(
            200,
            json!({
                "messaging_product": "whatsapp",
                "contacts": [{"input": "6281234567890", "wa_id": "6281234567890"}],
                "messages": [{"id": "wamid.HBgLMTY0NjcwNDM1OTUVAgARGBI1RjQyNUE3NEYxMzAzMzQ5MkEA"}],
            }),
        ))
        .await;
        // A trailing slash on the base URL is dropped.
        let provider = provider(&format!("{}/v25.0/", server.url()));
        let message = message();

        let outcome = provider.send_message(&message).await;

        assert_eq!(
            outcome,
            Outcome::Delivered {
                provider_message_id: Some(
                    "wamid.HBgLMTY0NjcwNDM1OTUVAgARGBI1RjQyNUE3NEYxMzAzMzQ5MkEA".to_owned()
                ),
                http_status: Some(200),
            }
        );
        let request = server.request().await;
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/v25.0/1065/messages");
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(
            request.header("user-agent"),
            Some(concat!("kurir/", env!("CARGO_PKG_VERSION")))
        );
        assert_eq!(
            request.json(),
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": "6281234567890",
                "type": "text",
                "text": {"preview_url": false, "body": message.content.text().unwrap().as_str()},
                "biz_opaque_callback_data": message.id.to_string(),
            })
        );
    }

    #[tokio::test]
    async fn success_without_an_id_is_still_delivered() {
        assert_eq!(
            answer(Reply::json(200, json!({"messages": []}))).await,
            Outcome::Delivered {
                provider_message_id: None,
                http_status: Some(200),
            }
        );
        assert_eq!(
            answer(Reply::new(201, "")).await,
            Outcome::Delivered {
                provider_message_id: None,
                http_status: Some(201),
            }
        );
    }

    #[tokio::test]
    async fn updates_the_profile_about_text() {
        let mut server = TestServer::start(Reply::json(200, json!({"success": true}))).await;
        let provider = provider(&format!("{}/v25.0", server.url()));
        let update = status();

        assert_eq!(
            provider.update_status(&update).await,
            Outcome::Delivered {
                provider_message_id: None,
                http_status: Some(200),
            }
        );
        let request = server.request().await;
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/v25.0/1065/whatsapp_business_profile");
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {TOKEN}").as_str())
        );
        assert_eq!(
            request.json(),
            json!({"messaging_product": "whatsapp", "about": "Sedang sibuk dalam rapat."})
        );
    }

    #[tokio::test]
    async fn status_update_errors_are_classified_too() {
        let server = TestServer::start(Reply::json(400, meta_error(100, None))).await;
        let outcome = provider(&server.url()).update_status(&status()).await;
        let Outcome::Permanent { error } = outcome else {
            panic!("expected permanent, got {outcome:?}");
        };
        assert_eq!(error.code, "100");
    }

    /// Sends `code` with HTTP 400 (or 500), so the code, not the status,
    /// decides; with a `Retry-After: 30`.
    async fn classified(code: i64, http_status: u16) -> Outcome {
        answer(
            Reply::json(http_status, meta_error(code, Some("Recipient gone")))
                .header("retry-after", "30"),
        )
        .await
    }

    /// What Meta said, as `last_error.detail` quotes it.
    const META_SAID: &str = "(#131026) Message undeliverable — Recipient gone";

    #[tokio::test]
    async fn error_table_retry_with_backoff() {
        for code in meta_errors::RETRY {
            let outcome = classified(code, 400).await;
            assert_eq!(
                outcome,
                Outcome::Retryable {
                    error: ProviderError::new(code.to_string(), META_SAID, Some(400)),
                    retry_after: Some(Duration::from_secs(30)),
                },
                "code {code}"
            );
        }
    }

    #[tokio::test]
    async fn error_table_retry_much_later() {
        for code in meta_errors::RETRY_MUCH_LATER {
            let Outcome::Retryable { error, retry_after } = classified(code, 400).await else {
                panic!("code {code} should be retried");
            };
            // Hours, not the 30 s the answer asked for.
            assert_eq!(retry_after, Some(MUCH_LATER), "code {code}");
            assert!(MUCH_LATER >= Duration::from_secs(3600));
            assert!(error.detail.ends_with(META_SAID), "{}", error.detail);
        }
    }

    #[tokio::test]
    async fn error_table_permanent_for_the_message() {
        for code in meta_errors::PERMANENT_FOR_MESSAGE {
            let Outcome::Permanent { error } = classified(code, 500).await else {
                panic!("code {code} should be permanent");
            };
            assert_eq!(error.code, code.to_string());
            assert!(error.detail.contains(META_SAID), "{}", error.detail);
        }
    }

    #[tokio::test]
    async fn error_table_permanent_for_the_recipient() {
        for code in meta_errors::PERMANENT_FOR_RECIPIENT {
            let Outcome::Permanent { error } = classified(code, 500).await else {
                panic!("code {code} should be permanent");
            };
            assert_eq!(error.code, code.to_string());
            // Each says what it means for the recipient, then Meta's words.
            assert!(
                error.detail.len() > META_SAID.len() + 20 && error.detail.ends_with(META_SAID),
                "code {code}: {}",
                error.detail
            );
        }
        let Outcome::Permanent { error } = classified(131047, 400).await else {
            panic!("131047 should be permanent");
        };
        assert!(
            error.detail.contains("24-hour window")
                && error.detail.contains("send this as a template"),
            "{}",
            error.detail
        );
    }

    #[tokio::test]
    async fn error_table_stop_the_sender() {
        for code in meta_errors::STOP_THE_SENDER {
            let Outcome::Permanent { error } = classified(code, 400).await else {
                panic!("code {code} should fail the message");
            };
            // It says what to fix, for the operator.
            assert!(
                error.detail.contains("(operator)"),
                "code {code}: {}",
                error.detail
            );
        }
    }

    #[tokio::test]
    async fn template_errors_name_the_template() {
        let server = TestServer::start(Reply::json(400, meta_error(132001, None))).await;
        let template = kurir_core::Template::parse(
            "template",
            &json!({"name": "order_updat", "language": "id", "parameters": ["Budi"]}),
        )
        .unwrap();
        let message = ClaimedMessage {
            content: Content::Template(template),
            ..message()
        };
        let Outcome::Permanent { error } = provider(&server.url()).send_message(&message).await
        else {
            panic!("132001 should be permanent");
        };
        assert_eq!(error.code, "132001");
        assert!(
            error
                .detail
                .starts_with("template order_updat (id) does not exist"),
            "{}",
            error.detail
        );
    }

    #[tokio::test]
    async fn sends_a_template_message() {
        let mut server =
            TestServer::start(Reply::json(200, json!({"messages": [{"id": "wamid.T"}]}))).await;
        let provider = provider(&format!("{}/v25.0", server.url()));
        let positional = kurir_core::Template::parse(
            "template",
            &json!({"name": "order_update", "language": "id", "parameters": ["Budi", "#1234"]}),
        )
        .unwrap();
        let message = ClaimedMessage {
            content: Content::Template(positional),
            ..message()
        };
        assert!(matches!(
            provider.send_message(&message).await,
            Outcome::Delivered { .. }
        ));
        assert_eq!(
            server.request().await.json(),
            json!({
                "messaging_product": "whatsapp",
                "recipient_type": "individual",
                "to": "6281234567890",
                "type": "template",
                "template": {
                    "name": "order_update",
                    "language": {"code": "id"},
                    "components": [{"type": "body", "parameters": [
                        {"type": "text", "text": "Budi"}, {"type": "text", "text": "#1234"}]}],
                },
                "biz_opaque_callback_data": message.id.to_string(),
            })
        );
    }

    #[tokio::test]
    async fn rate_limited_without_a_code_honours_retry_after() {
        let outcome = answer(Reply::new(429, "slow down").header("Retry-After", "17")).await;
        assert_eq!(
            outcome,
            Outcome::Retryable {
                error: ProviderError::new("http_429", "slow down", Some(429)),
                retry_after: Some(Duration::from_secs(17)),
            }
        );
        // Garbage Retry-After is ignored; a long one is kept whole.
        let outcome = answer(Reply::new(429, "").header("Retry-After", "later")).await;
        assert!(
            matches!(&outcome, Outcome::Retryable { retry_after: None, error } if error.detail == "Too Many Requests"),
            "{outcome:?}"
        );
        let outcome = answer(Reply::new(503, "").header("Retry-After", "86400")).await;
        assert!(
            matches!(outcome, Outcome::Retryable { retry_after: Some(wait), .. } if wait == Duration::from_secs(86400)),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn server_error_is_retryable() {
        let outcome = answer(Reply::json(500, meta_error(1, None))).await;
        let Outcome::Retryable { error, retry_after } = outcome else {
            panic!("expected retryable, got {outcome:?}");
        };
        assert_eq!(error.code, "1");
        assert_eq!(error.http_status, Some(500));
        assert_eq!(retry_after, None);
    }

    #[tokio::test]
    async fn unknown_code_on_404_is_permanent() {
        let outcome = answer(Reply::json(404, meta_error(999_999, None))).await;
        let Outcome::Permanent { error } = outcome else {
            panic!("expected permanent, got {outcome:?}");
        };
        assert_eq!(error.code, "999999");
        assert_eq!(error.http_status, Some(404));
    }

    #[tokio::test]
    async fn garbage_error_body_uses_the_status() {
        let outcome = answer(Reply::new(502, "<html>Bad gateway</html>")).await;
        assert_eq!(
            outcome,
            Outcome::Retryable {
                error: ProviderError::new("http_502", "<html>Bad gateway</html>", Some(502)),
                retry_after: None,
            }
        );
        let outcome = answer(Reply::new(400, "x".repeat(2000))).await;
        let Outcome::Permanent { error } = outcome else {
            panic!("expected permanent, got {outcome:?}");
        };
        assert_eq!(error.code, "http_400");
        assert_eq!(error.detail.chars().count(), 500);
        // JSON, but not Meta's shape.
        let outcome = answer(Reply::json(403, json!({"error": "nope"}))).await;
        assert!(
            matches!(&outcome, Outcome::Permanent { error } if error.code == "http_403"),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn long_meta_detail_is_truncated() {
        let body = |code: i64| {
            json!({"error": {"message": "m".repeat(400), "code": code,
                             "error_data": {"details": "d".repeat(400)}}})
        };
        let outcome = answer(Reply::json(400, body(131_999))).await;
        let Outcome::Permanent { error } = outcome else {
            panic!("expected permanent, got {outcome:?}");
        };
        assert_eq!(error.code, "131999");
        assert_eq!(error.detail.chars().count(), 500);
        assert!(error.detail.starts_with(&"m".repeat(400)));
        // kurir's advice comes first and stays whole; Meta's words are cut.
        let outcome = answer(Reply::json(400, body(131026))).await;
        let Outcome::Permanent { error } = outcome else {
            panic!("expected permanent, got {outcome:?}");
        };
        assert_eq!(error.detail.chars().count(), 500);
        assert!(
            error.detail.starts_with("the recipient cannot receive"),
            "{}",
            error.detail
        );
    }

    #[tokio::test]
    async fn timeout_is_retryable() {
        let mut server = TestServer::silent().await;
        let mut args = args(ProviderKind::Whatsapp);
        args.provider_timeout = Duration::from_millis(200);
        args.whatsapp_base_url = server.url();
        args.whatsapp_token = Some(TOKEN.to_owned());
        args.whatsapp_phone_number_id = Some("1065".to_owned());
        let provider = WhatsAppProvider::from_args(&args).expect("provider");

        let outcome = provider.send_message(&message()).await;

        let Outcome::Retryable { error, retry_after } = outcome else {
            panic!("expected retryable, got {outcome:?}");
        };
        assert_eq!(error.code, "timeout");
        assert_eq!(error.http_status, None);
        assert_eq!(retry_after, None);
        assert!(!error.detail.contains(TOKEN), "{}", error.detail);
        assert!(!error.detail.contains("http://"), "{}", error.detail);
        assert_eq!(server.request().await.path, "/1065/messages");
    }

    #[tokio::test]
    async fn connection_refused_is_retryable() {
        let outcome = provider(&refused_url().await)
            .send_message(&message())
            .await;
        let Outcome::Retryable { error, .. } = outcome else {
            panic!("expected retryable, got {outcome:?}");
        };
        assert_eq!(error.code, "connect");
        assert!(!error.detail.contains(TOKEN), "{}", error.detail);
    }

    #[test]
    fn from_args_checks_its_settings() {
        let mut settings = args(ProviderKind::Whatsapp);
        assert!(WhatsAppProvider::from_args(&settings).is_err());
        settings.whatsapp_token = Some(TOKEN.to_owned());
        assert!(WhatsAppProvider::from_args(&settings).is_err());
        settings.whatsapp_phone_number_id = Some("1065".to_owned());
        let provider = WhatsAppProvider::from_args(&settings).expect("provider");
        assert_eq!(
            provider.messages_url.as_str(),
            "https://graph.facebook.com/v25.0/1065/messages"
        );
        assert!(!format!("{provider:?}").contains(TOKEN));
        assert_eq!(provider.name(), "whatsapp");

        settings.whatsapp_base_url = "ftp://example.com".to_owned();
        assert!(WhatsAppProvider::from_args(&settings).is_err());
        settings.whatsapp_base_url = "https://example.com".to_owned();
        settings.whatsapp_token = Some("bad\ntoken".to_owned());
        let err = WhatsAppProvider::from_args(&settings).expect_err("bad token");
        assert!(!err.contains("bad\ntoken"));
    }
}
