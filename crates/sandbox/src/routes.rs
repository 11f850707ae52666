//! The HTTP surface: WhatsApp-shaped routes plus `/__sandbox/*` control routes.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde_json::{Value, json};
use tracing::debug;

use crate::config::KnobsPatch;
use crate::meta::MetaError;
use crate::record::{RecordedRequest, RequestKind};
use crate::state::{AppState, Success};

type AppRef = Arc<AppState>;

/// The whole router. Path parameters share names across routes (the router
/// needs that); handlers take the last one as the phone number id.
pub(crate) fn router(state: AppRef) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/__sandbox/messages",
            get(list_messages).delete(clear_messages),
        )
        .route("/__sandbox/config", get(get_config).patch(patch_config))
        .route("/{seg}/messages", post(send_message).fallback(unknown))
        .route(
            "/{seg}/{phone_number_id}/messages",
            post(send_message).fallback(unknown),
        )
        .route(
            "/{seg}/whatsapp_business_profile",
            post(update_profile).fallback(unknown),
        )
        .route(
            "/{seg}/{phone_number_id}/whatsapp_business_profile",
            post(update_profile).fallback(unknown),
        )
        .fallback(unknown)
        .with_state(state)
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn list_messages(State(app): State<AppRef>) -> Json<Value> {
    Json(json!({ "messages": app.recorder.snapshot() }))
}

async fn clear_messages(State(app): State<AppRef>) -> StatusCode {
    app.recorder.clear();
    StatusCode::NO_CONTENT
}

async fn get_config(State(app): State<AppRef>) -> Json<Value> {
    Json(json!(app.knobs()))
}

async fn patch_config(State(app): State<AppRef>, body: Bytes) -> Response {
    let patch: KnobsPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return MetaError::invalid_parameter(format!("Bad config patch: {e}")).into_response();
        }
    };
    match app.update_knobs(|knobs| patch.apply(knobs)) {
        Ok(knobs) => {
            debug!(?knobs, "sandbox knobs changed");
            Json(json!(knobs)).into_response()
        }
        Err(e) => MetaError::invalid_parameter(e).into_response(),
    }
}

/// Everything a WhatsApp-shaped handler needs from the request.
struct Incoming {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

async fn send_message(
    State(app): State<AppRef>,
    Path(params): Path<Vec<(String, String)>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Incoming {
        method,
        uri,
        headers,
        body,
    };
    handle(&app, RequestKind::Message, last_param(params), incoming).await
}

async fn update_profile(
    State(app): State<AppRef>,
    Path(params): Path<Vec<(String, String)>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Incoming {
        method,
        uri,
        headers,
        body,
    };
    handle(&app, RequestKind::Profile, last_param(params), incoming).await
}

async fn unknown(
    State(app): State<AppRef>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let incoming = Incoming {
        method,
        uri,
        headers,
        body,
    };
    handle(&app, RequestKind::Unknown, String::new(), incoming).await
}

/// What [`RecordedRequest::message_type`] shows: the body's `type`, or
/// `"text"` for a message body without one.
fn message_type(kind: RequestKind, value: Option<&Value>) -> Option<String> {
    let object = value.filter(|v| v.is_object())?;
    match object.get("type") {
        Some(Value::String(t)) => Some(t.clone()),
        None | Some(Value::Null) if kind == RequestKind::Message => Some("text".to_owned()),
        _ => None,
    }
}

fn last_param(params: Vec<(String, String)>) -> String {
    params
        .into_iter()
        .next_back()
        .map(|(_, v)| v)
        .unwrap_or_default()
}

/// Runs one WhatsApp-shaped request and records it, whatever the outcome.
async fn handle(
    app: &AppState,
    kind: RequestKind,
    phone_number_id: String,
    req: Incoming,
) -> Response {
    let seq = app.recorder.next_seq();
    let received_at = Utc::now();
    let (value, parse_error) = match serde_json::from_slice::<Value>(&req.body) {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let field = |pointer: &str| {
        value
            .as_ref()
            .and_then(|v| v.pointer(pointer))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let mut record = RecordedRequest {
        seq,
        received_at,
        method: req.method.to_string(),
        path: req.uri.path().to_owned(),
        kind,
        phone_number_id: phone_number_id.clone(),
        to: field("/to"),
        body: field("/text/body"),
        message_type: message_type(kind, value.as_ref()),
        template: value
            .as_ref()
            .and_then(|v| v.get("template"))
            .filter(|t| !t.is_null())
            .cloned(),
        about: field("/about"),
        biz_opaque_callback_data: field("/biz_opaque_callback_data"),
        authorization: req
            .headers
            .get(header::AUTHORIZATION)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned()),
        response_status: 0,
        wamid: None,
        error_code: None,
    };

    let outcome = match kind {
        RequestKind::Message => {
            app.send(
                &req.headers,
                value.as_ref(),
                parse_error.as_deref(),
                &phone_number_id,
            )
            .await
        }
        RequestKind::Profile => {
            app.profile(&req.headers, value.as_ref(), parse_error.as_deref())
                .await
        }
        RequestKind::Unknown => Err(MetaError::not_found(req.method.as_str(), req.uri.path())),
    };

    let response = match outcome {
        Ok(Success { body, wamid }) => {
            record.response_status = StatusCode::OK.as_u16();
            record.wamid = wamid;
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(error) => {
            record.response_status = error.status.as_u16();
            record.error_code = Some(error.code);
            error.into_response()
        }
    };
    debug!(
        seq,
        kind = ?record.kind,
        path = %record.path,
        status = record.response_status,
        error_code = ?record.error_code,
        "sandbox request"
    );
    app.recorder.push(record);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_defaults_to_text_for_messages_only() {
        let typed = json!({"type":"template"});
        let untyped = json!({"to":"1"});
        assert_eq!(
            message_type(RequestKind::Message, Some(&typed)).as_deref(),
            Some("template")
        );
        assert_eq!(
            message_type(RequestKind::Message, Some(&untyped)).as_deref(),
            Some("text")
        );
        assert_eq!(
            message_type(RequestKind::Message, Some(&json!({"type":null}))).as_deref(),
            Some("text")
        );
        assert_eq!(
            message_type(RequestKind::Message, Some(&json!({"type":5}))),
            None
        );
        assert_eq!(message_type(RequestKind::Message, Some(&json!([1]))), None);
        assert_eq!(message_type(RequestKind::Message, None), None);
        assert_eq!(message_type(RequestKind::Profile, Some(&untyped)), None);
    }
}
