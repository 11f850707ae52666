//! Shared server state and the per-request decision logic
//! (auth → parse → latency → magic recipients → throttle → fail → success).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, header};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Knobs};
use crate::meta::{MetaError, new_wamid};
use crate::receipts::{Accepted, Receipts};
use crate::record::{Recorder, lock};

/// Always fails permanently (400, 131026).
pub const MAGIC_UNDELIVERABLE: &str = "15550000001";
/// Fails retryably (503, 131016) twice per message, then succeeds.
pub const MAGIC_FLAKY: &str = "15550000002";
/// How many attempts of a message to [`MAGIC_FLAKY`] fail.
const FLAKY_FAILURES: u32 = 2;

#[derive(Debug)]
pub(crate) struct AppState {
    token: Option<String>,
    knobs: Mutex<Knobs>,
    pub(crate) recorder: Recorder,
    /// Attempts seen per message (callback data, else recipient) to [`MAGIC_FLAKY`].
    flaky_attempts: Mutex<HashMap<String, u32>>,
    pub(crate) receipts: Option<Arc<Receipts>>,
    pub(crate) shutdown: CancellationToken,
}

/// A valid send request.
#[derive(Debug)]
pub(crate) struct SendRequest {
    pub to: String,
    pub digits: String,
    pub callback_data: Option<String>,
}

/// A successful answer: its JSON body and, for messages, the wamid.
#[derive(Debug)]
pub(crate) struct Success {
    pub body: Value,
    pub wamid: Option<String>,
}

impl AppState {
    pub(crate) fn new(
        config: &Config,
        receipts: Option<Arc<Receipts>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            token: config.effective_token(),
            knobs: Mutex::new(config.knobs()),
            recorder: Recorder::default(),
            flaky_attempts: Mutex::new(HashMap::new()),
            receipts,
            shutdown,
        }
    }

    pub(crate) fn knobs(&self) -> Knobs {
        *lock(&self.knobs)
    }

    /// Changes the knobs atomically through `f`.
    pub(crate) fn update_knobs<E>(
        &self,
        f: impl FnOnce(Knobs) -> Result<Knobs, E>,
    ) -> Result<Knobs, E> {
        let mut knobs = lock(&self.knobs);
        *knobs = f(*knobs)?;
        Ok(*knobs)
    }

    /// `Authorization: Bearer <token>`: must match the configured token, or
    /// be any non-empty token when none is configured.
    pub(crate) fn check_auth(&self, headers: &HeaderMap) -> Result<(), MetaError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(MetaError::unauthorized(
                "An Authorization: Bearer <token> header is required.",
            ));
        };
        let value = value.to_str().unwrap_or_default().trim();
        let presented = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => "",
        };
        if presented.is_empty() {
            return Err(MetaError::unauthorized(
                "The Authorization header must be 'Bearer <token>'.",
            ));
        }
        match &self.token {
            Some(expected) if expected != presented => {
                Err(MetaError::unauthorized("The access token is invalid."))
            }
            _ => Ok(()),
        }
    }

    /// Sleeps the configured latency; cut short by shutdown.
    async fn latency(&self, knobs: &Knobs) {
        if knobs.latency_ms > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(knobs.latency_ms)) => {}
                () = self.shutdown.cancelled() => {}
            }
        }
    }

    /// The random throttle and failure injections, in that order.
    fn chaos(knobs: &Knobs) -> Result<(), MetaError> {
        if knobs.throttle_rate > 0.0 && rand::random::<f64>() < knobs.throttle_rate {
            return Err(MetaError::throttled(knobs.retry_after_secs));
        }
        if knobs.fail_rate > 0.0 && rand::random::<f64>() < knobs.fail_rate {
            return Err(MetaError::internal());
        }
        Ok(())
    }

    /// Full handling of one send, after the body bytes are read.
    pub(crate) async fn send(
        &self,
        headers: &HeaderMap,
        body: Option<&Value>,
        parse_error: Option<&str>,
        phone_number_id: &str,
    ) -> Result<Success, MetaError> {
        self.check_auth(headers)?;
        let request = parse_send(body, parse_error)?;
        let knobs = self.knobs();
        self.latency(&knobs).await;
        self.magic(&request)?;
        Self::chaos(&knobs)?;

        let wamid = new_wamid();
        if let Some(receipts) = &self.receipts {
            receipts.dispatch(Accepted {
                wamid: wamid.clone(),
                phone_number_id: phone_number_id.to_owned(),
                recipient_id: request.digits.clone(),
                callback_data: request.callback_data.clone(),
            });
        }
        Ok(Success {
            body: json!({
                "messaging_product": "whatsapp",
                "contacts": [{ "input": request.to, "wa_id": request.digits }],
                "messages": [{ "id": wamid }],
            }),
            wamid: Some(wamid),
        })
    }

    /// Full handling of one profile ("about") update.
    pub(crate) async fn profile(
        &self,
        headers: &HeaderMap,
        body: Option<&Value>,
        parse_error: Option<&str>,
    ) -> Result<Success, MetaError> {
        self.check_auth(headers)?;
        parse_profile(body, parse_error)?;
        let knobs = self.knobs();
        self.latency(&knobs).await;
        Self::chaos(&knobs)?;
        Ok(Success {
            body: json!({ "success": true }),
            wamid: None,
        })
    }

    fn magic(&self, request: &SendRequest) -> Result<(), MetaError> {
        match request.digits.as_str() {
            MAGIC_UNDELIVERABLE => Err(MetaError::undeliverable()),
            MAGIC_FLAKY => {
                let key = match &request.callback_data {
                    Some(data) => format!("cb:{data}"),
                    None => format!("to:{}", request.digits),
                };
                let mut attempts = lock(&self.flaky_attempts);
                let n = attempts.entry(key).or_insert(0);
                *n = n.saturating_add(1);
                if *n <= FLAKY_FAILURES {
                    Err(MetaError::unavailable(*n))
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        }
    }
}

fn parsed<'a>(body: Option<&'a Value>, parse_error: Option<&str>) -> Result<&'a Value, MetaError> {
    match body {
        Some(v) if v.is_object() => Ok(v),
        Some(_) => Err(MetaError::invalid_parameter(
            "The request body must be a JSON object.",
        )),
        None => Err(MetaError::invalid_parameter(format!(
            "The request body is not valid JSON: {}",
            parse_error.unwrap_or("empty body")
        ))),
    }
}

fn required_str<'a>(v: &'a Value, pointer: &str, name: &str) -> Result<&'a str, MetaError> {
    match v.pointer(pointer) {
        None | Some(Value::Null) => Err(MetaError::invalid_parameter(format!(
            "The parameter {name} is required."
        ))),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(MetaError::invalid_parameter(format!(
            "Param {name} must be a string."
        ))),
    }
}

fn check_product(v: &Value) -> Result<(), MetaError> {
    let product = required_str(v, "/messaging_product", "messaging_product")?;
    if product != "whatsapp" {
        return Err(MetaError::invalid_parameter(
            "Param messaging_product must be 'whatsapp'.",
        ));
    }
    Ok(())
}

/// Validates a send body: `messaging_product`, `to` (digits, `+` optional),
/// `type` text (or absent), `text.body`.
pub(crate) fn parse_send(
    body: Option<&Value>,
    parse_error: Option<&str>,
) -> Result<SendRequest, MetaError> {
    let v = parsed(body, parse_error)?;
    check_product(v)?;
    let to = required_str(v, "/to", "to")?;
    let digits = to.trim().strip_prefix('+').unwrap_or(to.trim());
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MetaError::invalid_parameter(format!(
            "Param to must be a phone number (digits, optional leading '+'), got {to:?}."
        )));
    }
    match v.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "text" => {}
        Some(other) => {
            return Err(MetaError::invalid_parameter(format!(
                "The sandbox only supports type 'text', got {other}."
            )));
        }
    }
    required_str(v, "/text/body", "text['body']")?;
    let callback_data = match v.get("biz_opaque_callback_data") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(MetaError::invalid_parameter(
                "Param biz_opaque_callback_data must be a string.",
            ));
        }
    };
    Ok(SendRequest {
        to: to.to_owned(),
        digits: digits.to_owned(),
        callback_data,
    })
}

/// Validates a profile body: `messaging_product`, `about` a string if present.
pub(crate) fn parse_profile(
    body: Option<&Value>,
    parse_error: Option<&str>,
) -> Result<(), MetaError> {
    let v = parsed(body, parse_error)?;
    check_product(v)?;
    match v.get("about") {
        None | Some(Value::Null | Value::String(_)) => Ok(()),
        Some(_) => Err(MetaError::invalid_parameter(
            "Param about must be a string.",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_send_accepts_plus_and_rejects_missing_fields() {
        let ok = json!({"messaging_product":"whatsapp","to":"+62123","type":"text","text":{"body":"Hi"}});
        let req = parse_send(Some(&ok), None).expect("valid");
        assert_eq!(req.to, "+62123");
        assert_eq!(req.digits, "62123");
        for bad in [
            json!({"to":"62123","text":{"body":"Hi"}}),
            json!({"messaging_product":"whatsapp","text":{"body":"Hi"}}),
            json!({"messaging_product":"whatsapp","to":"62123","text":{}}),
            json!({"messaging_product":"whatsapp","to":"abc","text":{"body":"Hi"}}),
            json!({"messaging_product":"sms","to":"62123","text":{"body":"Hi"}}),
            json!([1, 2]),
        ] {
            let err = parse_send(Some(&bad), None).expect_err("invalid");
            assert_eq!(err.code, 100, "{bad}");
        }
        assert_eq!(parse_send(None, Some("eof")).expect_err("none").code, 100);
    }
}
