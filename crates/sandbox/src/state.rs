//! Shared server state and the per-request decision logic
//! (auth → parse → template check → latency → magic recipients → throttle →
//! fail → success). The template check comes before latency and magic
//! recipients because Meta rejects an unknown template outright: it never
//! counts as an attempt to a recipient.

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
use crate::templates::Templates;

/// Always fails permanently (400, 131026).
pub const MAGIC_UNDELIVERABLE: &str = "15550000001";
/// Fails retryably (503, 131016) twice per message, then succeeds.
pub const MAGIC_FLAKY: &str = "15550000002";
/// Outside the 24-hour customer service window: `text` messages fail
/// (400, 131047); templates are accepted, as on Meta.
pub const MAGIC_OUTSIDE_WINDOW: &str = "15550000003";
/// How many attempts of a message to [`MAGIC_FLAKY`] fail.
const FLAKY_FAILURES: u32 = 2;

#[derive(Debug)]
pub(crate) struct AppState {
    token: Option<String>,
    knobs: Mutex<Knobs>,
    /// The approved templates, fixed at start.
    templates: Templates,
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
    pub content: Content,
}

/// What a send carries, as far as the sandbox's decisions need it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Content {
    /// A free-form `text` message.
    Text,
    /// A `template` message.
    Template(TemplateSend),
}

/// The parts of a template send that are checked against [`Templates`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TemplateSend {
    pub name: String,
    pub language: String,
    /// Parameters of the `body` component (0 without one); header and
    /// button parameters are not counted.
    pub body_parameters: usize,
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
        templates: Templates,
        receipts: Option<Arc<Receipts>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            token: config.effective_token(),
            knobs: Mutex::new(config.knobs()),
            templates,
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
        if let Content::Template(t) = &request.content {
            self.templates
                .check(&t.name, &t.language, t.body_parameters)?;
        }
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
            MAGIC_OUTSIDE_WINDOW => match request.content {
                Content::Text => Err(MetaError::outside_window()),
                Content::Template(_) => Ok(()),
            },
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
/// then either `type` text (or absent) with `text.body`, or `type` template
/// with a well-formed `template` (see [`parse_template`]).
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
    let content = match v.get("type") {
        None | Some(Value::Null) => Content::Text,
        Some(Value::String(t)) if t == "text" => Content::Text,
        Some(Value::String(t)) if t == "template" => Content::Template(parse_template(v)?),
        Some(other) => {
            return Err(MetaError::invalid_parameter(format!(
                "The sandbox only supports type 'text' or 'template', got {other}."
            )));
        }
    };
    if content == Content::Text {
        required_str(v, "/text/body", "text['body']")?;
    }
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
        content,
    })
}

/// Component types a template send may carry parameters for.
const COMPONENT_TYPES: [&str; 3] = ["header", "body", "button"];

/// Validates the `template` object of a send (code 100 when malformed):
/// `name` and `language.code` non-empty strings; `components` absent, null
/// or an array of objects whose `type` is header, body or button, each with
/// `parameters` absent or an array of objects with a string `type` (and a
/// string `text` for `text` parameters); at most one body. Header and button
/// parameters are otherwise taken as given, since only the body's count is
/// checked against the template.
fn parse_template(v: &Value) -> Result<TemplateSend, MetaError> {
    require_object(v.get("template"), "template")?;
    let name = required_non_empty(v, "/template/name", "template['name']")?;
    require_object(v.pointer("/template/language"), "template['language']")?;
    let language =
        required_non_empty(v, "/template/language/code", "template['language']['code']")?;

    let components = match v.pointer("/template/components") {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(items)) => items.as_slice(),
        Some(_) => {
            return Err(MetaError::invalid_parameter(
                "Param template['components'] must be an array.",
            ));
        }
    };
    let mut body_parameters = None;
    for (i, component) in components.iter().enumerate() {
        let at = format!("template['components'][{i}]");
        require_object(Some(component), &at)?;
        let kind = required_str(component, "/type", &format!("{at}['type']"))?;
        if !COMPONENT_TYPES.contains(&kind) {
            return Err(MetaError::invalid_parameter(format!(
                "Param {at}['type'] must be one of header, body, button, got {kind:?}."
            )));
        }
        let count = check_parameters(component, &at)?;
        if kind == "body" {
            if body_parameters.is_some() {
                return Err(MetaError::invalid_parameter(format!(
                    "Param {at} is a second body component; a template has one body."
                )));
            }
            body_parameters = Some(count);
        }
    }
    Ok(TemplateSend {
        name: name.to_owned(),
        language: language.to_owned(),
        body_parameters: body_parameters.unwrap_or(0),
    })
}

/// Checks a component's `parameters` and returns how many there are.
fn check_parameters(component: &Value, at: &str) -> Result<usize, MetaError> {
    let parameters = match component.get("parameters") {
        None | Some(Value::Null) => return Ok(0),
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(MetaError::invalid_parameter(format!(
                "Param {at}['parameters'] must be an array."
            )));
        }
    };
    for (j, parameter) in parameters.iter().enumerate() {
        let at = format!("{at}['parameters'][{j}]");
        require_object(Some(parameter), &at)?;
        let kind = required_str(parameter, "/type", &format!("{at}['type']"))?;
        if kind == "text" {
            required_str(parameter, "/text", &format!("{at}['text']"))?;
        }
    }
    Ok(parameters.len())
}

/// A present JSON object, or code 100 naming the parameter.
fn require_object(value: Option<&Value>, name: &str) -> Result<(), MetaError> {
    match value {
        None | Some(Value::Null) => Err(MetaError::invalid_parameter(format!(
            "The parameter {name} is required."
        ))),
        Some(Value::Object(_)) => Ok(()),
        Some(_) => Err(MetaError::invalid_parameter(format!(
            "Param {name} must be a JSON object."
        ))),
    }
}

/// [`required_str`] that also refuses an empty (or blank) string.
fn required_non_empty<'a>(v: &'a Value, pointer: &str, name: &str) -> Result<&'a str, MetaError> {
    let s = required_str(v, pointer, name)?;
    if s.trim().is_empty() {
        return Err(MetaError::invalid_parameter(format!(
            "Param {name} must not be empty."
        )));
    }
    Ok(s)
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

    fn template_body(template: Value) -> Value {
        json!({"messaging_product":"whatsapp","recipient_type":"individual",
               "to":"6281234567890","type":"template","template":template,
               "biz_opaque_callback_data":"kurir-1"})
    }

    fn order_update(language: &str, names: &[&str]) -> Value {
        let parameters: Vec<Value> = names
            .iter()
            .map(|n| json!({"type":"text","text":n}))
            .collect();
        template_body(json!({"name":"order_update","language":{"code":language},
                             "components":[{"type":"body","parameters":parameters}]}))
    }

    fn state() -> AppState {
        AppState::new(
            &Config::default(),
            Templates::builtin(),
            None,
            CancellationToken::new(),
        )
    }

    fn bearer() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_static("Bearer t"),
        );
        headers
    }

    async fn send(state: &AppState, body: &Value) -> Result<Success, MetaError> {
        state.send(&bearer(), Some(body), None, "1").await
    }

    #[test]
    fn parse_template_counts_only_body_parameters() {
        let body = template_body(json!({
        "name":"order_update","language":{"code":"id","policy":"deterministic"},
        "components":[
            {"type":"header","parameters":[{"type":"image","image":{"link":"https://x/y.png"}}]},
            {"type":"body","parameters":[{"type":"text","text":"Budi"},{"type":"text","text":"#1234"}]},
            {"type":"button","sub_type":"quick_reply","index":"0",
             "parameters":[{"type":"payload","payload":"STOP"}]},
            {"type":"button","sub_type":"url","index":"1",
             "parameters":[{"type":"text","text":"1234"}]},
        ]}));
        let req = parse_send(Some(&body), None).expect("valid");
        assert_eq!(req.digits, "6281234567890");
        assert_eq!(req.callback_data.as_deref(), Some("kurir-1"));
        assert_eq!(
            req.content,
            Content::Template(TemplateSend {
                name: "order_update".into(),
                language: "id".into(),
                body_parameters: 2,
            })
        );
        for components in [None, Some(json!(null)), Some(json!([]))] {
            let mut template = json!({"name":"hello_world","language":{"code":"en_US"}});
            if let Some(c) = components {
                template["components"] = c;
            }
            let req = parse_send(Some(&template_body(template)), None).expect("no components");
            assert!(
                matches!(
                    req.content,
                    Content::Template(TemplateSend {
                        body_parameters: 0,
                        ..
                    })
                ),
                "{req:?}"
            );
        }
        let text = json!({"messaging_product":"whatsapp","to":"62123","text":{"body":"Hi"}});
        assert_eq!(
            parse_send(Some(&text), None).expect("text").content,
            Content::Text
        );
    }

    #[test]
    fn malformed_templates_are_code_100() {
        let lang = json!({"code":"id"});
        for (template, says) in [
            (None, "template is required"),
            (
                Some(json!("order_update")),
                "template must be a JSON object",
            ),
            (
                Some(json!({"language":lang})),
                "template['name'] is required",
            ),
            (
                Some(json!({"name":7,"language":lang})),
                "template['name'] must be a string",
            ),
            (
                Some(json!({"name":"","language":lang})),
                "template['name'] must not be empty",
            ),
            (
                Some(json!({"name":"order_update"})),
                "template['language'] is required",
            ),
            (
                Some(json!({"name":"order_update","language":"id"})),
                "template['language'] must be a JSON object",
            ),
            (
                Some(json!({"name":"order_update","language":{}})),
                "template['language']['code'] is required",
            ),
            (
                Some(json!({"name":"order_update","language":{"code":" "}})),
                "['code'] must not be empty",
            ),
            (
                Some(json!({"name":"x","language":lang,"components":{}})),
                "template['components'] must be an array",
            ),
            (
                Some(json!({"name":"x","language":lang,"components":["body"]})),
                "template['components'][0] must be a JSON object",
            ),
            (
                Some(json!({"name":"x","language":lang,"components":[{"parameters":[]}]})),
                "template['components'][0]['type'] is required",
            ),
            (
                Some(json!({"name":"x","language":lang,"components":[{"type":"footer"}]})),
                "must be one of header, body, button",
            ),
            (
                Some(
                    json!({"name":"x","language":lang,"components":[{"type":"body","parameters":"Budi"}]}),
                ),
                "['parameters'] must be an array",
            ),
            (
                Some(
                    json!({"name":"x","language":lang,"components":[{"type":"body","parameters":["Budi"]}]}),
                ),
                "template['components'][0]['parameters'][0] must be a JSON object",
            ),
            (
                Some(
                    json!({"name":"x","language":lang,"components":[{"type":"body","parameters":[{"text":"Budi"}]}]}),
                ),
                "['parameters'][0]['type'] is required",
            ),
            (
                Some(
                    json!({"name":"x","language":lang,"components":[{"type":"header","parameters":[{"type":5}]}]}),
                ),
                "['type'] must be a string",
            ),
            (
                Some(
                    json!({"name":"x","language":lang,"components":[{"type":"body","parameters":[{"type":"text"}]}]}),
                ),
                "['parameters'][0]['text'] is required",
            ),
            (
                Some(
                    json!({"name":"x","language":lang,"components":[{"type":"body"},{"type":"body"}]}),
                ),
                "second body component",
            ),
        ] {
            let mut body = template_body(json!(null));
            match template {
                Some(t) => body["template"] = t,
                None => {
                    if let Some(o) = body.as_object_mut() {
                        o.remove("template");
                    }
                }
            }
            let err = parse_send(Some(&body), None).expect_err(says);
            assert_eq!(err.code, 100, "{body}");
            assert!(err.details.contains(says), "{says}: {}", err.details);
        }
        let image = json!({"messaging_product":"whatsapp","to":"62123","type":"image"});
        let err = parse_send(Some(&image), None).expect_err("image");
        assert_eq!(err.code, 100);
    }

    #[tokio::test]
    async fn template_sends_are_checked_against_the_catalogue() {
        let state = state();
        let ok = send(&state, &order_update("id", &["Budi", "#1234"]))
            .await
            .expect("accepted");
        assert!(ok.wamid.is_some_and(|w| w.starts_with("wamid.")));
        assert_eq!(ok.body["contacts"][0]["wa_id"], "6281234567890");
        let hello = template_body(json!({"name":"hello_world","language":{"code":"en_US"}}));
        assert!(
            send(&state, &hello).await.is_ok(),
            "hello_world without components"
        );

        let mut unknown = order_update("id", &["Budi", "#1234"]);
        unknown["template"]["name"] = json!("order_updat");
        let e = send(&state, &unknown).await.expect_err("unknown name");
        assert_eq!((e.status.as_u16(), e.code), (400, 132_001));
        assert_eq!(
            e.details,
            "template name (order_updat) does not exist in id"
        );
        assert_eq!(
            e.body()["error"]["message"],
            "(#132001) Template name does not exist in the translation"
        );

        let e = send(&state, &order_update("fr", &["Budi", "#1234"]))
            .await
            .expect_err("unknown language");
        assert_eq!((e.status.as_u16(), e.code), (400, 132_001));
        assert_eq!(
            e.details,
            "template name (order_update) does not exist in fr"
        );

        let e = send(&state, &order_update("id", &["Budi"]))
            .await
            .expect_err("wrong count");
        assert_eq!((e.status.as_u16(), e.code), (400, 132_000));
        assert_eq!(
            e.details,
            "body: number of localizable_params (1) does not match the expected number of params (2)"
        );
        assert_eq!(
            e.body()["error"]["message"],
            "(#132000) Number of parameters does not match the expected number of params"
        );
        let e = send(&state, &order_update("en_US", &[]))
            .await
            .expect_err("no body");
        assert_eq!(e.code, 132_000);
    }

    #[tokio::test]
    async fn outside_window_refuses_text_but_accepts_templates() {
        let state = state();
        for to in ["+15550000003", MAGIC_OUTSIDE_WINDOW] {
            let text =
                json!({"messaging_product":"whatsapp","to":to,"type":"text","text":{"body":"Hi"}});
            let e = send(&state, &text).await.expect_err("text outside window");
            assert_eq!((e.status.as_u16(), e.code), (400, 131_047));
            assert_eq!(
                e.body()["error"]["message"],
                "(#131047) Re-engagement message"
            );
            assert_eq!(
                e.details,
                "Message failed to send because more than 24 hours have passed since the customer last replied to this number."
            );
            let mut template = order_update("id", &["Budi", "#1234"]);
            template["to"] = json!(to);
            let ok = send(&state, &template).await.expect("template accepted");
            assert!(ok.wamid.is_some());
        }
        let untyped =
            json!({"messaging_product":"whatsapp","to":MAGIC_OUTSIDE_WINDOW,"text":{"body":"Hi"}});
        assert_eq!(
            send(&state, &untyped).await.expect_err("untyped").code,
            131_047
        );
    }

    #[tokio::test]
    async fn template_errors_come_before_magic_recipients() {
        let state = state();
        let mut flaky = order_update("id", &["Budi"]);
        flaky["to"] = json!(MAGIC_FLAKY);
        for _ in 0..3 {
            assert_eq!(send(&state, &flaky).await.expect_err("count").code, 132_000);
        }
        flaky = order_update("id", &["Budi", "#1"]);
        flaky["to"] = json!(MAGIC_FLAKY);
        assert_eq!(
            send(&state, &flaky).await.expect_err("first attempt").code,
            131_016,
            "rejected templates did not use up the flaky attempts"
        );
    }
}
