//! Meta (Graph API) shaped errors, wamids and trace ids.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};

/// Error codes the sandbox answers with.
pub mod codes {
    /// Invalid parameter (malformed JSON, missing field).
    pub const INVALID_PARAMETER: u32 = 100;
    /// Invalid or missing OAuth access token.
    pub const ACCESS_TOKEN: u32 = 190;
    /// Throttled: rate limit hit.
    pub const RATE_LIMIT: u32 = 130_429;
    /// Generic retryable failure.
    pub const SOMETHING_WENT_WRONG: u32 = 131_000;
    /// Temporarily unavailable, retryable.
    pub const SERVICE_UNAVAILABLE: u32 = 131_016;
    /// Permanent: the message cannot be delivered.
    pub const UNDELIVERABLE: u32 = 131_026;
    /// Re-engagement: a free-form message outside the 24-hour customer
    /// service window (only a template may be sent then).
    pub const REENGAGEMENT: u32 = 131_047;
    /// The template's body parameters do not match its definition.
    pub const TEMPLATE_PARAM_COUNT_MISMATCH: u32 = 132_000;
    /// No approved template with this name in this language.
    pub const TEMPLATE_NOT_FOUND: u32 = 132_001;
}

/// One error answer: HTTP status plus the Meta error body.
#[derive(Debug, Clone)]
pub(crate) struct MetaError {
    pub status: StatusCode,
    pub code: u32,
    pub title: &'static str,
    pub details: String,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl MetaError {
    fn new(status: StatusCode, code: u32, title: &'static str, details: impl Into<String>) -> Self {
        Self {
            status,
            code,
            title,
            details: details.into(),
            retry_after: None,
        }
    }

    pub(crate) fn invalid_parameter(details: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            codes::INVALID_PARAMETER,
            "Invalid parameter",
            details,
        )
    }

    pub(crate) fn unauthorized(details: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            codes::ACCESS_TOKEN,
            "Invalid OAuth access token",
            details,
        )
    }

    pub(crate) fn undeliverable() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            codes::UNDELIVERABLE,
            "Message undeliverable",
            "Sandbox magic recipient +15550000001 never accepts messages.",
        )
    }

    /// A free-form message to a user whose last reply is over 24 hours old.
    pub(crate) fn outside_window() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            codes::REENGAGEMENT,
            "Re-engagement message",
            "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
        )
    }

    /// Meta's wording: the same answer whether the name is unknown or only
    /// the language is missing, with both in the details.
    pub(crate) fn template_not_found(name: &str, language: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            codes::TEMPLATE_NOT_FOUND,
            "Template name does not exist in the translation",
            format!("template name ({name}) does not exist in {language}"),
        )
    }

    /// `got` body parameters were sent where the template has `expected`.
    pub(crate) fn template_param_count(got: usize, expected: usize) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            codes::TEMPLATE_PARAM_COUNT_MISMATCH,
            "Number of parameters does not match the expected number of params",
            format!(
                "body: number of localizable_params ({got}) does not match the expected number of params ({expected})"
            ),
        )
    }

    pub(crate) fn unavailable(attempt: u32) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::SERVICE_UNAVAILABLE,
            "Service unavailable",
            format!("Sandbox magic recipient +15550000002 fails attempt {attempt} of 2; retry."),
        )
    }

    pub(crate) fn throttled(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            codes::RATE_LIMIT,
            "Rate limit hit",
            format!("Sandbox throttle; retry after {retry_after_secs} s."),
        );
        e.retry_after = Some(retry_after_secs);
        e
    }

    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            codes::SOMETHING_WENT_WRONG,
            "Something went wrong",
            "Sandbox injected failure (fail_rate).",
        )
    }

    pub(crate) fn not_found(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            codes::INVALID_PARAMETER,
            "Unsupported request",
            format!("The sandbox has no {method} {path}."),
        )
    }

    /// The JSON body: `{"error":{"message","type","code","error_data","fbtrace_id"}}`.
    pub(crate) fn body(&self) -> Value {
        json!({
            "error": {
                "message": format!("(#{}) {}", self.code, self.title),
                "type": "OAuthException",
                "code": self.code,
                "error_data": {
                    "messaging_product": "whatsapp",
                    "details": self.details,
                },
                "fbtrace_id": fbtrace_id(),
            }
        })
    }
}

impl IntoResponse for MetaError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// A fresh random trace id, like Meta's `fbtrace_id`.
pub(crate) fn fbtrace_id() -> String {
    let tail: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(22)
        .map(char::from)
        .collect();
    format!("A{tail}")
}

/// A new `wamid.…`: a process-wide counter (unique) plus random bits (unique across runs).
pub(crate) fn new_wamid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("wamid.SBX{n:010X}{:016X}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shape() {
        let body = MetaError::undeliverable().body();
        assert_eq!(body["error"]["message"], "(#131026) Message undeliverable");
        assert_eq!(body["error"]["type"], "OAuthException");
        assert_eq!(body["error"]["code"], 131_026);
        assert_eq!(body["error"]["error_data"]["messaging_product"], "whatsapp");
        assert!(
            body["error"]["fbtrace_id"]
                .as_str()
                .is_some_and(|s| s.len() == 23)
        );
    }

    #[test]
    fn wamids_are_unique() {
        let a = new_wamid();
        let b = new_wamid();
        assert!(a.starts_with("wamid."));
        assert_ne!(a, b);
    }
}
