//! One error type for the HTTP layer, rendered as RFC 9457 problem+json:
//! `{"type","title","status","detail"}` plus `"errors":[{"field","message"}]`
//! for validation. Internal causes are logged, never returned.
//!
//! Logged once, when the answer is made, by what an operator should do:
//! a 5xx at ERROR with its cause chain; a 503 (Postgres unavailable) at
//! WARN, at most one line a second with a count of the ones held back,
//! since an outage fails every request at once; a 4xx is the client's
//! business, at DEBUG.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use kurir_core::{FieldError, ValidationErrors};
use kurir_store::StoreError;
use serde::Serialize;

/// Where problem types are documented (docs/api.md, "Errors").
const TYPE_BASE: &str = "https://kurir.dev/problems/";

#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    errors: Vec<FieldError>,
    /// Seconds (u32: keeps the type small, and is over a century).
    retry_after: Option<u32>,
    /// More headers for the answer (a rate limit's); boxed like `cause`.
    headers: Option<Box<HeaderMap>>,
    /// What went wrong inside, for the log (never for the client). Boxed:
    /// every handler returns this type, so it is kept small.
    cause: Option<Box<str>>,
}

/// An RFC 9457 problem: the body of every error.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(examples(json!({
    "type": "https://kurir.dev/problems/validation", "title": "Invalid request", "status": 422,
    "detail": "message must not be blank",
    "errors": [{"field": "message", "message": "must not be blank"}]
})))]
pub(crate) struct Problem<'a> {
    /// `https://kurir.dev/problems/<slug>`: `validation`, `not-found`,
    /// `unauthorized`, `rate-limited`, `unavailable`… (README, "Errors").
    #[serde(rename = "type")]
    #[schema(format = "uri")]
    kind: String,
    title: &'a str,
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    detail: &'a str,
    /// The fields at fault, for a validation problem (422) or a conflict (409).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    #[schema(value_type = Vec<crate::openapi::schemas::FieldErrorDoc>, required = false)]
    errors: &'a [FieldError],
}

impl ApiError {
    fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            slug,
            title,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
            headers: None,
            cause: None,
        }
    }

    fn caused_by(self, cause: impl Into<String>) -> Self {
        Self {
            cause: Some(cause.into().into_boxed_str()),
            ..self
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The fields a validation problem names.
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// 422: one or more fields are invalid.
    pub fn validation(errors: ValidationErrors) -> Self {
        let detail = match errors.0.as_slice() {
            [one] => format!("{} {}", one.field, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
        Self {
            errors: errors.0,
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid request",
                detail,
            )
        }
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::validation(FieldError::new(field, message).into())
    }

    /// 422 for a field the parser refused, with serde's words (which may
    /// name the field again: "unknown field `mesage`, expected `message`").
    pub fn unparsable(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            detail: format!("{field}: {message}"),
            ..Self::field(field, message)
        }
    }

    /// 400: the body is not JSON.
    pub fn malformed_json(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            detail,
        )
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    /// 403: the caller proved who it is, and that is not allowed (a
    /// webhook handshake with the wrong verify token).
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    /// 404, also for another account's ids: existence is never revealed.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no such {what}"),
        )
    }

    pub fn route_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            "no such endpoint",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "this endpoint does not take that method",
        )
    }

    /// 409, naming the field that clashes.
    pub fn conflict(field: &str, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        Self {
            errors: vec![FieldError::new(field, detail.clone())],
            ..Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
        }
    }

    pub fn payload_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("the request body is over the {limit} byte limit"),
        )
    }

    /// 408: the request (its headers or its body) did not arrive in time;
    /// `detail` names the deadline.
    pub fn request_timeout(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            "Request timeout",
            detail,
        )
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as JSON with Content-Type: application/json",
        )
    }

    /// 503 with `Retry-After`: a dependency is down; nothing was accepted.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                detail,
            )
        }
    }

    /// 429 with `Retry-After`: over a rate limit; nothing was accepted.
    /// `headers` describe the limit (`RateLimit-Policy`, `RateLimit`).
    pub fn rate_limited(detail: impl Into<String>, retry_after: u64, headers: HeaderMap) -> Self {
        let retry_after = u32::try_from(retry_after).unwrap_or(u32::MAX);
        Self {
            retry_after: Some(retry_after),
            headers: Some(Box::new(headers)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too many requests",
                detail,
            )
        }
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "something went wrong on our side; it has been logged",
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(cause) => {
                ApiError::unavailable("the database is unavailable; try again").caused_by(cause)
            }
            other => ApiError::internal().caused_by(cause_chain(&other)),
        }
    }
}

/// "postgres error: db error: ERROR: relation \"x\" does not exist": the
/// error and each of its sources.
fn cause_chain(err: &dyn std::error::Error) -> String {
    let mut chain = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    chain
}

/// Lets one log line through per period and counts the ones it holds back.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    /// When the last line went out, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held_back)`: log now, saying how many lines were held back
    /// since the last one; `None`: hold this one back.
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last, held_back) = &mut *state;
        match last {
            Some(at) if now.saturating_duration_since(*at) < self.every => {
                *held_back += 1;
                None
            }
            _ => {
                *last = Some(now);
                Some(std::mem::take(held_back))
            }
        }
    }
}

/// 503s for an unavailable Postgres: thousands a second during an outage.
static UNAVAILABLE_LOG: Throttle = Throttle::new(Duration::from_secs(1));

impl ApiError {
    fn log(&self) {
        let status = self.status.as_u16();
        match (&self.cause, self.status) {
            (Some(cause), StatusCode::SERVICE_UNAVAILABLE) => {
                if let Some(suppressed) = UNAVAILABLE_LOG.admit(Instant::now()) {
                    tracing::warn!(status, %cause, suppressed, "postgres unavailable; answering 503");
                }
            }
            (Some(cause), code) if code.is_server_error() => {
                tracing::error!(status, %cause, "answering {status}");
            }
            // A 5xx without a cause was logged where it was made (a panic, say).
            (None, code) if code.is_server_error() => {}
            _ => {
                tracing::debug!(status, problem = self.slug, detail = %self.detail, "answering {status}")
            }
        }
    }
}

impl ApiError {
    fn problem(&self) -> Problem<'_> {
        Problem {
            kind: format!("{TYPE_BASE}{}", self.slug),
            title: self.title,
            status: self.status.as_u16(),
            detail: &self.detail,
            errors: &self.errors,
        }
    }

    /// The problem+json body as a value, for an error that is one part of a
    /// larger answer (an item of a batch).
    pub fn problem_json(&self) -> serde_json::Value {
        serde_json::to_value(self.problem()).unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(more) = self.headers {
            headers.extend(*more);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // The rest of the body was not read: the connection cannot carry
        // another request, so say it is closing (RFC 9110 §15.5.9).
        if matches!(
            self.status,
            StatusCode::REQUEST_TIMEOUT | StatusCode::PAYLOAD_TOO_LARGE
        ) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_lets_one_line_a_period_through_and_counts_the_rest() {
        let throttle = Throttle::new(Duration::from_secs(1));
        let start = Instant::now();
        assert_eq!(throttle.admit(start), Some(0));
        for ms in [1, 10, 500, 999] {
            assert_eq!(throttle.admit(start + Duration::from_millis(ms)), None);
        }
        let later = start + Duration::from_millis(1000);
        assert_eq!(throttle.admit(later), Some(4));
        assert_eq!(throttle.admit(later + Duration::from_millis(1)), None);
        assert_eq!(throttle.admit(later + Duration::from_secs(60)), Some(1));
    }

    #[test]
    fn the_cause_chain_names_every_source() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let err = Outer(std::io::Error::other("inner"));
        assert_eq!(cause_chain(&err), "outer: inner");
    }
}
