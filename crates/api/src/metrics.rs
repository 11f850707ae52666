//! HTTP metrics: every answer counted by route template, method and status,
//! with its latency (`kurir_http_requests_total`,
//! `kurir_http_request_duration_seconds`; see `kurir_core::telemetry`).

use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    http::header,
    middleware::Next,
    response::{IntoResponse, Response},
};

/// Counts and times one request. The route is the matched template
/// (`/v1/users/{id}`), never the path itself: ids would make the label
/// unbounded. Requests that matched no route count as `unmatched`.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(
        "kurir_http_request_duration_seconds",
        "route" => route.clone(),
        "method" => method.clone()
    )
    .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        "kurir_http_requests_total",
        "route" => route,
        "method" => method,
        "status" => status
    )
    .increment(1);
    response
}

/// `GET /metrics`: the process's metrics in Prometheus' text format.
#[utoipa::path(
    get, path = "/metrics", tag = "operations", operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "The process's metrics in Prometheus' text exposition format (README, \"Metrics\"). No key is needed.",
    responses((status = 200, description = "The metrics", content_type = "text/plain; version=0.0.4; charset=utf-8", body = String,
        example = json!("kurir_accepted_total{kind=\"message\"} 1840\n"))),
)]
pub async fn render() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        kurir_core::telemetry::render(),
    )
        .into_response()
}

/// Sets the pool gauges every ten seconds until `shutdown`.
pub async fn report_pool(db: kurir_store::Db, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        db.report_pool("api");
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
        }
    }
}
