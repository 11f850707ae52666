//! The trace context of each request (W3C `traceparent`): the client's, or a
//! new trace. It goes on the request's span (`trace_id`, with the
//! `request_id`), on the rows the request creates, and from there into the
//! AMQP headers and the worker's spans: one trace per message.

use axum::{
    extract::{FromRequestParts, Request},
    http::{HeaderMap, request::Parts},
    middleware::Next,
    response::Response,
};
use kurir_core::TraceContext;

/// The request's trace context: its valid `traceparent`, else a new trace.
pub fn of(headers: &HeaderMap) -> TraceContext {
    headers
        .get(TraceContext::HEADER)
        .and_then(|value| value.to_str().ok())
        .and_then(TraceContext::parse)
        .unwrap_or_else(TraceContext::new_root)
}

/// Puts the request's [`TraceContext`] in its extensions, for its span and
/// its handler.
pub async fn context(mut request: Request, next: Next) -> Response {
    let context = of(request.headers());
    request.extensions_mut().insert(context);
    next.run(request).await
}

/// The span of one HTTP request: method, route and the ids that find it in
/// the logs (`request_id`, `trace_id`).
pub fn span(request: &Request) -> tracing::Span {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let trace_id = request
        .extensions()
        .get::<TraceContext>()
        .map(TraceContext::trace_id_hex)
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        uri = %request.uri().path(),
        request_id,
        trace_id,
    );
    if let Some(context) = request.extensions().get::<TraceContext>() {
        kurir_core::telemetry::join(&span, *context);
    }
    span
}

/// A handler's view of the request's trace: the context its rows carry on
/// (a new span of the same trace).
#[derive(Debug, Clone, Copy)]
pub struct Trace(pub TraceContext);

impl<S: Send + Sync> FromRequestParts<S> for Trace {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let context = parts
            .extensions
            .get::<TraceContext>()
            .copied()
            .unwrap_or_else(|| of(&parts.headers));
        Ok(Trace(kurir_core::telemetry::next_hop(context)))
    }
}
